// The public page: counts and live agents, names and status only.
'use strict';

(function () {
  const counts = document.getElementById('counts');
  const agents = document.getElementById('agents');
  const none = document.getElementById('no-agents');
  const LIVE = ['claiming', 'claimed', 'crashed'];
  const STATUSES = ['starting', 'idle', 'claiming', 'claimed', 'crashed', 'destroying', 'recycling'];

  function item(agent) {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'agent-name';
    name.textContent = agent.agentName;
    const status = document.createElement('span');
    status.className = 'status status-' + agent.status;
    status.textContent = agent.status;
    li.append(name, status);
    return li;
  }

  async function refresh() {
    const [countsReply, agentsReply] = await Promise.all([
      fetch('/api/pool/counts'),
      fetch('/api/pool/agents?limit=200&status=' + LIVE.join(',')),
    ]);
    if (!countsReply.ok || !agentsReply.ok) return;
    const c = await countsReply.json();
    const a = await agentsReply.json();
    counts.replaceChildren(...STATUSES.map((s) => {
      const li = document.createElement('li');
      li.className = 'count-' + s;
      const n = document.createElement('span');
      n.className = 'n';
      n.textContent = String(c[s] || 0);
      const label = document.createElement('span');
      label.textContent = s;
      li.append(n, label);
      return li;
    }));
    const live = LIVE.flatMap((s) => a[s] || []).filter((agent) => agent.agentName);
    agents.replaceChildren(...live.map(item));
    none.hidden = live.length > 0;
  }

  const loop = () => refresh().catch(() => {}).finally(() => window.setTimeout(loop, 5000));
  window.setTimeout(loop, 5000);
})();
