// The dashboard: counts, instances (paged), pool size, add with live progress, drain, recycle, kill,
// dismiss, claim. Refreshes itself every two seconds.
'use strict';

(function () {
  const ap = window.agentpool;
  const $ = (id) => document.getElementById(id);
  const PAGE = 25;
  // Cursors of the pages before the one shown: [] on the first page.
  let cursors = [];
  let current = null;
  let next = null;

  function link(href, text) {
    if (!ap.httpUrl(href)) return document.createTextNode(text || '');
    return ap.el('a', { href: href, textContent: text, rel: 'noopener noreferrer', target: '_blank' });
  }

  function actionButton(label, className, onClick) {
    const button = ap.el('button', { type: 'button', textContent: label, className: 'small ' + className });
    button.addEventListener('click', onClick);
    return button;
  }

  function row(instance) {
    const actions = [];
    if (instance.status === 'claimed') {
      actions.push(actionButton('Recycle', 'secondary recycle', () => recycle(instance.id)));
    }
    if (instance.status !== 'destroying') {
      actions.push(actionButton('Kill', 'danger kill', () => kill(instance.id)));
    }
    if (instance.status === 'crashed') {
      actions.push(actionButton('Dismiss', 'secondary dismiss', () => dismiss(instance.id)));
    }
    const cell = (label, children) => {
      const td = ap.el('td', {}, children);
      td.dataset.label = label;
      return td;
    };
    const tr = ap.el('tr', {}, [
      cell('Age', [ap.age(instance.createdAt)]),
      cell('Agent', [ap.el('span', { className: 'agent-name', textContent: instance.agentName || '—' })]),
      cell('Status', [ap.el('span', { className: 'status status-' + instance.status, textContent: instance.status })]),
      cell('Instance', [link(instance.url, instance.name)]),
      cell('Invite', [instance.inviteUrl ? link(instance.inviteUrl, 'invite') : '—']),
      ap.el('td', { className: 'actions' }, actions),
    ]);
    tr.dataset.id = instance.id;
    return tr;
  }

  async function refresh() {
    const query = '/api/pool/status?limit=' + PAGE + (current ? '&after=' + encodeURIComponent(current) : '');
    const status = await ap.api('GET', query);
    ap.renderCounts($('counts'), status.counts);
    $('instance-rows').replaceChildren(...status.instances.map(row));
    $('no-instances').hidden = status.instances.length > 0;
    next = status.nextCursor;
    $('page-next').disabled = !next;
    $('page-first').disabled = cursors.length === 0;
    await refreshSize();
    const notice = $('notice');
    if (notice.classList.contains('error')) ap.show(notice, '');
  }

  const sizeForm = $('size-form');
  let sizeEditing = false;
  sizeForm.addEventListener('input', () => { sizeEditing = true; });

  async function refreshSize() {
    const size = await ap.api('GET', '/api/pool/settings');
    $('size-source').textContent = size.source === 'operator'
      ? 'Set by ' + size.updatedBy + '.'
      : 'Using the environment defaults.';
    if (!sizeEditing && !sizeForm.contains(document.activeElement)) {
      $('min-idle').value = size.minIdle;
      $('max-total').value = size.maxTotal;
      $('sizing').value = JSON.stringify(size.sizing, null, 2);
    }
    $('sizing-chart').src = '/admin/sizing.svg?at=' + Date.now();
  }

  sizeForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = { minIdle: Number($('min-idle').value), maxTotal: Number($('max-total').value) };
    try {
      body.sizing = JSON.parse($('sizing').value);
    } catch (error) {
      ap.show($('size-message'), 'The sizing policy is not JSON: ' + error.message, 'error');
      return;
    }
    const before = await ap.api('GET', '/api/pool/settings');
    const shrinking = body.minIdle < before.minIdle || body.maxTotal < before.maxTotal;
    if (shrinking && !ap.confirmed('Shrink the pool to min ' + body.minIdle + ', max ' + body.maxTotal)) return;
    try {
      const saved = await ap.api('PUT', '/api/pool/settings', body);
      sizeEditing = false;
      ap.show($('size-message'), 'Saved: min idle ' + saved.minIdle + ', max total ' + saved.maxTotal + '.', 'ok');
      await refresh();
    } catch (error) {
      ap.show($('size-message'), error.message, 'error');
    }
  });

  async function kill(id) {
    if (!ap.confirmed('Kill instance ' + id)) return;
    try {
      await ap.api('DELETE', '/api/pool/instances/' + encodeURIComponent(id) + '/destroy');
      ap.show($('notice'), 'Instance ' + id + ' is being destroyed.', 'ok');
      await refresh();
    } catch (error) {
      ap.show($('notice'), error.message, 'error');
    }
  }

  // Back to the pool from its golden checkpoint where the provider can; destroyed otherwise.
  async function recycle(id) {
    if (!ap.confirmed('Recycle instance ' + id)) return;
    try {
      const reply = await ap.api('DELETE', '/api/pool/instances/' + encodeURIComponent(id));
      const what = reply.status === 'recycling' ? 'is being recycled' : 'is being destroyed (this provider does not recycle)';
      ap.show($('notice'), 'Instance ' + id + ' ' + what + '.', 'ok');
      await refresh();
    } catch (error) {
      ap.show($('notice'), error.message, 'error');
    }
  }

  async function dismiss(id) {
    if (!ap.confirmed('Dismiss crashed instance ' + id)) return;
    try {
      await ap.api('DELETE', '/api/pool/crashed/' + encodeURIComponent(id));
      ap.show($('notice'), 'Crashed instance ' + id + ' dismissed.', 'ok');
      await refresh();
    } catch (error) {
      ap.show($('notice'), error.message, 'error');
    }
  }

  $('drain-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const count = Number($('drain-count').value);
    if (!ap.confirmed('Drain ' + count + ' idle instance(s)')) return;
    try {
      const drained = await ap.api('POST', '/api/pool/drain', { count: count });
      ap.show($('drain-message'), 'Drained ' + drained.drained + '.', 'ok');
      await refresh();
    } catch (error) {
      ap.show($('drain-message'), error.message, 'error');
    }
  });

  // "+ Add N": the replenish stream's events, one line per instance, one chip per step.
  $('add-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const count = Number($('add-count').value);
    const progress = $('add-progress');
    const submit = $('add-submit');
    const lines = new Map();
    const line = (num) => {
      if (!lines.has(num)) {
        const li = ap.el('li', { className: 'instance-progress' }, [
          ap.el('span', { className: 'label', textContent: 'Instance ' + num + ': ' }),
          ap.el('span', { className: 'steps' }),
        ]);
        li.dataset.instance = String(num);
        lines.set(num, li);
        progress.append(li);
      }
      return lines.get(num);
    };
    progress.replaceChildren();
    ap.show($('add-message'), 'Adding ' + count + '…');
    submit.disabled = true;
    const source = new EventSource('/api/pool/replenish/stream?count=' + count +
      '&csrf=' + encodeURIComponent(ap.csrf));
    const finish = (text, kind) => {
      source.close();
      submit.disabled = false;
      ap.show($('add-message'), text, kind);
      refresh().catch(() => {});
    };
    source.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === 'step') {
        const steps = line(data.instanceNum).querySelector('.steps');
        let chip = steps.querySelector('[data-step="' + CSS.escape(data.step) + '"]');
        if (!chip) {
          chip = ap.el('span', {});
          chip.dataset.step = data.step;
          steps.append(chip);
        }
        chip.className = 'step ' + data.status;
        chip.dataset.status = data.status;
        chip.textContent = data.step + ': ' + data.status;
        chip.title = data.message || '';
      } else if (data.type === 'instance') {
        line(data.instanceNum).querySelector('.label').textContent =
          'Instance ' + data.instanceNum + ' (' + data.instance.id + '): ';
      } else if (data.type === 'error') {
        ap.show($('add-message'), data.message, 'error');
      } else if (data.type === 'complete') {
        finish('Complete: ' + data.created + ' created, ' + data.failed + ' failed.',
          data.failed > 0 ? 'error' : 'ok');
      }
    };
    // The stream ends after `complete`; anything else is an interruption, and reconnecting
    // would start the creations again.
    source.onerror = () => finish('The progress stream was interrupted.', 'error');
  });

  $('page-next').addEventListener('click', () => {
    if (!next) return;
    cursors.push(current);
    current = next;
    refresh().catch((error) => ap.show($('notice'), error.message, 'error'));
  });
  $('page-first').addEventListener('click', () => {
    cursors = [];
    current = null;
    refresh().catch((error) => ap.show($('notice'), error.message, 'error'));
  });

  ap.claimForm(() => refresh().catch(() => {}));
  ap.every(2000, refresh);
})();
