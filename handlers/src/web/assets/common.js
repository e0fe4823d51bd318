// Shared by the dashboard pages. Text from the server is only ever set with textContent.
'use strict';

window.agentpool = (function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : '';
  const production = document.body.dataset.environment === 'production';
  const STATUSES = ['starting', 'idle', 'claiming', 'claimed', 'crashed', 'destroying', 'recycling'];

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    (children || []).forEach((child) => node.append(child));
    return node;
  }

  function show(node, text, kind) {
    node.textContent = text;
    node.className = 'message' + (kind ? ' ' + kind : '');
  }

  // Calls the API with the session's CSRF token; resolves to the JSON body, rejects with the
  // server's message. A session that ended sends the page back to the login.
  async function api(method, path, body) {
    const init = { method: method, headers: { 'X-CSRF-Token': csrf }, credentials: 'same-origin' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      window.location.assign(window.location.pathname);
    }
    if (!response.ok) {
      throw new Error((data && data.error) || 'request failed (' + response.status + ')');
    }
    return data;
  }

  function confirmed(what) {
    return !production || window.confirm('This is PRODUCTION. ' + what + '?');
  }

  function httpUrl(text) {
    return typeof text === 'string' && /^https?:\/\//i.test(text);
  }

  function age(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return seconds + 's';
    if (seconds < 3600) return Math.floor(seconds / 60) + 'm';
    if (seconds < 86400) return Math.floor(seconds / 3600) + 'h';
    return Math.floor(seconds / 86400) + 'd';
  }

  function renderCounts(list, counts, only) {
    const wanted = only || STATUSES;
    list.replaceChildren(...wanted.map((status) => el('li', { className: 'count-' + status }, [
      el('span', { className: 'n', textContent: String(counts[status] || 0) }),
      el('span', { textContent: status }),
    ])));
  }

  // The claim form of the dashboard and of the phone view. With a template picked, its
  // name and instructions are the template's unless typed, and its user tools' fields appear
  // (password inputs: a credential is sent to the claim and never shown again).
  function claimForm(onClaimed) {
    const form = document.getElementById('claim-form');
    const message = document.getElementById('claim-message');
    const result = document.getElementById('claim-result');
    const link = document.getElementById('invite-url');
    const qr = document.getElementById('invite-qr');
    const submit = document.getElementById('claim-submit');
    const picker = document.getElementById('claim-template');
    const fields = document.getElementById('claim-user-fields');
    let templates = [];
    const chosen = () => templates.find((t) => t.id === picker.value);
    const renderFields = () => {
      const template = chosen();
      form.elements.agentName.required = !template;
      form.elements.instructions.required = !template;
      fields.replaceChildren(...(template ? template.userFields : []).flatMap((f) => {
        const id = 'claim-user-' + f.field;
        const input = el('input', { id: id, type: 'password', required: f.required, autocomplete: 'off' });
        input.dataset.field = f.field;
        return [el('label', { htmlFor: id, textContent: f.label + (f.required ? '' : ' (optional)') }), input];
      }));
    };
    const loadTemplates = async () => {
      templates = await api('GET', '/api/templates');
      const keep = picker.value;
      picker.replaceChildren(el('option', { value: '', textContent: 'No template' }),
        ...templates.map((t) => el('option', { value: t.id, textContent: t.slug + ' (' + t.agentName + ')' })));
      picker.value = templates.some((t) => t.id === keep) ? keep : '';
      renderFields();
    };
    picker.addEventListener('change', renderFields);
    loadTemplates().catch((error) => show(message, error.message, 'error'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const body = {};
      const template = chosen();
      const agentName = form.elements.agentName.value.trim();
      const instructions = form.elements.instructions.value;
      if (template) {
        body.templateId = template.id;
        if (agentName && agentName !== template.agentName) body.agentName = agentName;
        if (instructions.trim() && instructions !== template.instructions) body.instructions = instructions;
        const userConfig = {};
        fields.querySelectorAll('input[data-field]').forEach((input) => {
          if (input.value) userConfig[input.dataset.field] = input.value;
        });
        if (Object.keys(userConfig).length) body.userConfig = userConfig;
      } else {
        body.agentName = agentName;
        body.instructions = instructions;
      }
      const joinUrl = form.elements.joinUrl.value.trim();
      if (joinUrl) body.joinUrl = joinUrl;
      submit.disabled = true;
      result.hidden = true;
      show(message, 'Claiming…');
      try {
        const claimed = await api('POST', '/api/pool/claim', body);
        fields.querySelectorAll('input[data-field]').forEach((input) => { input.value = ''; });
        show(message, (claimed.joined ? 'Joined the conversation' : 'Claimed') +
          ' (instance ' + claimed.instanceId + ').', 'ok');
        if (httpUrl(claimed.inviteUrl)) {
          link.textContent = claimed.inviteUrl;
          link.href = claimed.inviteUrl;
          qr.src = '/admin/qr.svg?text=' + encodeURIComponent(claimed.inviteUrl);
          result.hidden = false;
        }
        if (onClaimed) onClaimed();
      } catch (error) {
        show(message, error.message, 'error');
      } finally {
        submit.disabled = false;
      }
    });
    return { loadTemplates };
  }

  // Calls `work` now and then every `ms`, one call at a time.
  function every(ms, work) {
    const run = async () => {
      try {
        await work();
      } catch (error) {
        const notice = document.getElementById('notice');
        if (notice) show(notice, 'Refresh failed: ' + error.message, 'error');
      }
      window.setTimeout(run, ms);
    };
    run();
  }

  return { csrf, el, show, api, confirmed, httpUrl, age, renderCounts, claimForm, every };
})();
