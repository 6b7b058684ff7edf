// redraft view: the list of evals (live), an eval's item filters, and the
// review page. Every text from the server is set with textContent: nothing
// it sends is ever parsed as HTML.
(function () {
  'use strict';
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message)); mark(); });

  function el(tag, text, attrs) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function row(cells) {
    var tr = el('tr');
    cells.forEach(function (c) {
      var td = el('td');
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? '' : String(c);
      tr.appendChild(td);
    });
    return tr;
  }
  function utc(ms) { return new Date(ms).toISOString().slice(0, 19).replace('T', ' '); }
  function mark() {
    document.body.setAttribute('data-app-errors', String(errors.length));
  }

  var main = document.querySelector('main[data-page]');
  var page = main ? main.getAttribute('data-page') : (document.getElementById('items') ? 'eval' : '');
  var live = page === 'list' || page === 'eval' || page === 'review' ? new EventSource('/api/live') : null;

  // ---- the list ----
  function list() {
    var body = document.querySelector('#evals tbody');
    var status = document.getElementById('status');
    var selects = document.querySelectorAll('#compare select');
    live.addEventListener('evals', function (ev) {
      var evals = JSON.parse(ev.data);
      body.textContent = '';
      evals.slice().reverse().forEach(function (e) {
        var link = el('a', e.id.slice(0, 16), { href: '/e/' + encodeURIComponent(e.id) });
        var tr = row([link, e.name, e.workflow, e.models, e.done + ' / ' + e.units, e.running, e.failed,
          e.mean_score === null ? '–' : Number(e.mean_score).toFixed(3), e.tokens, '$' + Number(e.cost_usd || 0).toFixed(4), utc(e.created_at)]);
        tr.setAttribute('data-eval', e.id);
        tr.setAttribute('data-done', String(e.done));
        body.appendChild(tr);
      });
      Array.prototype.forEach.call(selects, function (s, i) {
        var keep = s.value;
        s.textContent = '';
        evals.forEach(function (e) { s.appendChild(el('option', e.name + ' (' + e.id.slice(0, 8) + ')', { value: e.id })); });
        if (keep) s.value = keep; else if (evals.length > i) s.selectedIndex = evals.length - 1 - i;
      });
      status.textContent = evals.length + ' evals · updated ' + new Date().toLocaleTimeString();
      body.setAttribute('data-count', String(evals.length));
      document.body.setAttribute('data-app-ready', '1');
    });
  }

  // ---- one eval (or a comparison): filters over the report's item table ----
  function evalPage() {
    var table = document.getElementById('items');
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var bar = el('div', null, { id: 'filters' });
    var show = el('select', null, { id: 'show' });
    [['all', 'all items'], ['failed', 'failed (no score)'], ['right', 'right'], ['wrong', 'wrong'],
     ['flipped', 'flipped first → final'], ['neg', 'right → wrong'], ['pos', 'wrong → right']].forEach(function (o) {
      show.appendChild(el('option', o[1], { value: o[0] }));
    });
    var node = el('select', null, { id: 'node' });
    node.appendChild(el('option', 'any node', { value: '' }));
    var nodes = {};
    rows.forEach(function (r) { var n = r.getAttribute('data-node'); if (n) nodes[n] = true; });
    Object.keys(nodes).sort().forEach(function (n) { node.appendChild(el('option', n, { value: n })); });
    var min = el('input', null, { id: 'min-score', type: 'number', step: '0.05', min: '0', max: '1', placeholder: 'min score' });
    var count = el('span', null, { id: 'shown' });
    [['show ', show], ['final answer from ', node], ['', min]].forEach(function (p) {
      var label = el('label', p[0]);
      label.appendChild(p[1]);
      bar.appendChild(label);
    });
    bar.appendChild(count);
    table.parentNode.insertBefore(bar, table);
    function visible(r) {
      var status = r.getAttribute('data-status'), flip = r.getAttribute('data-flip');
      var want = show.value;
      if (want === 'failed' && status !== 'failed') return false;
      if ((want === 'right' || want === 'wrong') && !(flip === want || (want === 'right' ? flip === 'pos' : flip === 'neg'))) return false;
      if (want === 'flipped' && flip !== 'neg' && flip !== 'pos') return false;
      if ((want === 'neg' || want === 'pos') && flip !== want) return false;
      if (node.value && r.getAttribute('data-node') !== node.value) return false;
      if (min.value !== '') {
        var s = parseFloat(r.cells[5].textContent);
        if (isNaN(s) || s < parseFloat(min.value)) return false;
      }
      return true;
    }
    function apply() {
      var n = 0;
      rows.forEach(function (r) { var v = visible(r); r.style.display = v ? '' : 'none'; if (v) n++; });
      count.textContent = n + ' of ' + rows.length + ' shown';
      table.setAttribute('data-shown', String(n));
    }
    [show, node, min].forEach(function (c) { c.addEventListener('change', apply); c.addEventListener('input', apply); });
    apply();
    var nav = document.querySelector('nav.view');
    var ids = nav ? (nav.getAttribute('data-evals') || '').split(' ') : [];
    var first = {};
    var liveSpan = document.getElementById('live');
    live.addEventListener('evals', function (ev) {
      var parts = [];
      JSON.parse(ev.data).forEach(function (e) {
        if (ids.indexOf(e.id) < 0) return;
        if (!(e.id in first)) first[e.id] = e.done + e.failed;
        var fresh = e.done + e.failed - first[e.id];
        parts.push(e.name + ': ' + e.done + ' / ' + e.units + ' done, ' + e.failed + ' failed, ' + e.running +
          ' running' + (fresh > 0 ? ' · ' + fresh + ' new since this page loaded (reload to see them)' : ''));
      });
      liveSpan.textContent = parts.join(' · ');
    });
    document.body.setAttribute('data-app-ready', '1');
  }

  // ---- reviews ----
  function reviewPage() {
    var box = document.getElementById('reviews');
    var decidedList = document.getElementById('decided');
    var nameInput = document.getElementById('reviewer');
    var stored = null;
    try { stored = window.localStorage.getItem('redraft-reviewer'); } catch (e) { stored = null; }
    nameInput.value = stored || ('reviewer-' + Math.random().toString(36).slice(2, 8));
    var decisions = {}; // review id -> array of true/false/undefined
    var current = { review: null, edit: 0 };

    function name() { return nameInput.value.trim(); }
    function post(id, action, body) {
      body.reviewer = name();
      return fetch('/api/reviews/' + id + '/' + action, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body)
      }).then(function (r) { return r.json().then(function (v) { return { ok: r.ok, body: v }; }); });
    }
    function chars(s) { return Array.from(s); }

    function render(data) {
      box.textContent = '';
      var open = data.pending.filter(function (p) { return !p.taken_by; });
      data.pending.filter(function (p) { return p.taken_by; }).forEach(function (p) {
        box.appendChild(el('p', 'Review ' + p.id + ' of ' + (p.item ? p.item + ' · ' : '') + p.node + ': taken by ' + p.taken_by, { 'class': 'taken' }));
      });
      if (!open.length) box.appendChild(el('p', 'No review is waiting for you.', { id: 'none' }));
      open.forEach(function (p) {
        var d = decisions[p.id] || (decisions[p.id] = new Array(p.edits.length));
        var sec = el('section', null, { 'class': 'review', 'data-review': String(p.id) });
        sec.appendChild(el('h3', (p.item ? p.item + ' · ' : '') + p.node + ' · round ' + p.round + ' · review ' + p.depth + (p.mine ? ' · yours' : '')));
        var text = el('div', null, { 'class': 'text' });
        var before = chars(p.before), at = 0;
        p.edits.forEach(function (edit, i) {
          text.appendChild(document.createTextNode(before.slice(at, edit.start).join('')));
          var span = el('span', null, { 'class': 'edit', 'data-edit': String(i) });
          if (edit.before) span.appendChild(el('del', edit.before));
          if (edit.after) span.appendChild(el('ins', edit.after));
          span.appendChild(el('small', ' ' + edit.intent + ' '));
          var yes = el('button', 'accept', { type: 'button', 'class': 'accept' });
          var no = el('button', 'reject', { type: 'button', 'class': 'reject' });
          yes.addEventListener('click', function () { decide(p, i, true); });
          no.addEventListener('click', function () { decide(p, i, false); });
          span.appendChild(yes); span.appendChild(no);
          if (d[i] === true) span.classList.add('accepted');
          if (d[i] === false) span.classList.add('rejected');
          if (current.review === p.id && current.edit === i) span.classList.add('current');
          text.appendChild(span);
          at = edit.end;
        });
        text.appendChild(document.createTextNode(before.slice(at).join('')));
        sec.appendChild(text);
        var comment = el('textarea', null, { 'class': 'comment', rows: '2', cols: '60', placeholder: 'comment (optional)' });
        sec.appendChild(comment);
        var submit = el('button', 'Submit', { type: 'button', 'class': 'submit' });
        submit.addEventListener('click', function () { send(p, comment.value); });
        sec.appendChild(el('br'));
        sec.appendChild(submit);
        sec.appendChild(el('span', '', { 'class': 'message' }));
        box.appendChild(sec);
      });
      if (open.length && (current.review === null || !open.some(function (p) { return p.id === current.review; }))) {
        current = { review: open[0].id, edit: 0 };
        highlight();
      }
      decidedList.textContent = '';
      data.decided.slice().reverse().forEach(function (x) {
        decidedList.appendChild(el('li', (x.item ? x.item + ' · ' : '') + x.node + ' round ' + x.round + ': ' + x.accepted + ' of ' + x.proposed +
          ' accepted by ' + x.reviewer + (x.comment ? ' — ' + x.comment : '')));
      });
      box.setAttribute('data-open', String(open.length));
      document.body.setAttribute('data-app-ready', '1');
    }
    function highlight() {
      Array.prototype.forEach.call(document.querySelectorAll('.edit.current'), function (e) { e.classList.remove('current'); });
      var sec = document.querySelector('section[data-review="' + current.review + '"]');
      var span = sec && sec.querySelector('[data-edit="' + current.edit + '"]');
      if (span) { span.classList.add('current'); span.scrollIntoView({ block: 'nearest' }); }
    }
    function decide(p, i, accept) {
      decisions[p.id][i] = accept;
      var span = document.querySelector('section[data-review="' + p.id + '"] [data-edit="' + i + '"]');
      if (span) {
        span.classList.toggle('accepted', accept);
        span.classList.toggle('rejected', !accept);
      }
      if (!p.mine) post(p.id, 'claim', {}).then(function (r) { if (r.ok) p.mine = true; else message(p, r.body.error); });
      current = { review: p.id, edit: Math.min(i + 1, p.edits.length - 1) };
      highlight();
    }
    function message(p, text) {
      var m = document.querySelector('section[data-review="' + p.id + '"] .message');
      if (m) m.textContent = ' ' + text;
    }
    function send(p, comment) {
      var d = decisions[p.id];
      for (var i = 0; i < p.edits.length; i++) {
        if (d[i] === undefined) { message(p, 'decide every edit first (' + (i + 1) + ' is open)'); return; }
      }
      post(p.id, 'submit', { decisions: d, comment: comment }).then(function (r) {
        if (!r.ok) message(p, r.body.error); else { delete decisions[p.id]; current = { review: null, edit: 0 }; refresh(); }
      });
    }
    var latest = { pending: [] };
    function refresh() {
      try { window.localStorage.setItem('redraft-reviewer', name()); } catch (e) { /* private mode */ }
      fetch('/api/reviews?reviewer=' + encodeURIComponent(name())).then(function (r) { return r.json(); }).then(function (data) {
        latest = data;
        render(data);
      });
    }
    function currentReview() {
      return latest.pending.filter(function (p) { return p.id === current.review && !p.taken_by; })[0];
    }
    document.addEventListener('keydown', function (ev) {
      if (ev.target && (ev.target.tagName === 'TEXTAREA' || ev.target.tagName === 'INPUT')) return;
      var p = currentReview();
      if (!p) return;
      if (ev.key === 'j') { current.edit = Math.min(current.edit + 1, p.edits.length - 1); highlight(); }
      else if (ev.key === 'k') { current.edit = Math.max(current.edit - 1, 0); highlight(); }
      else if (ev.key === 'a') decide(p, current.edit, true);
      else if (ev.key === 'r') decide(p, current.edit, false);
      else if (ev.key === 'Enter') {
        var c = document.querySelector('section[data-review="' + p.id + '"] .comment');
        send(p, c ? c.value : '');
      } else return;
      ev.preventDefault();
    });
    nameInput.addEventListener('change', refresh);
    live.addEventListener('reviews', refresh);
  }

  if (page === 'list') list();
  else if (page === 'eval') evalPage();
  else if (page === 'review') reviewPage();
  mark();
})();
