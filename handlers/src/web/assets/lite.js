// The phone view: counts at a glance and the claim form.
'use strict';

(function () {
  const ap = window.agentpool;
  const counts = document.getElementById('counts');
  const refresh = async () => {
    ap.renderCounts(counts, await ap.api('GET', '/api/pool/counts'), ['idle', 'starting', 'claimed']);
  };
  ap.claimForm(refresh);
  ap.every(3000, refresh);
})();
