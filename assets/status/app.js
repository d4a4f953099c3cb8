// The status page: reads GET /api/v1/status every 2 s (the same document scripts read)
// and shows every channel's ingest, engines and distributions, with a player for each
// distribution (hls.js, served by Sluice itself: the page requests nothing elsewhere).
'use strict';

const REFRESH_MS = 2000;
const channelsEl = document.getElementById('channels');
const summary = document.getElementById('summary');
const tokenForm = document.getElementById('token-form');
let token = sessionStorage.getItem('sluice-admin-token') || '';

tokenForm.addEventListener('submit', (e) => {
  e.preventDefault();
  token = document.getElementById('token').value.trim();
  sessionStorage.setItem('sluice-admin-token', token);
  refresh();
});

/** An element with attributes and children (strings become text, never markup). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

/** `{a: 2, b: 1}` as "a 2, b 1" (largest first); an em dash for none. */
function breakdown(counts) {
  const entries = Object.entries(counts || {}).sort((x, y) => y[1] - x[1]);
  return entries.length ? entries.map(([k, n]) => `${k} ${n}`).join(', ') : '\u2014';
}

function stateCell(state) {
  return el('td', {}, el('span', { class: `state ${state}`, text: state }));
}

function ingestState(ch) {
  if (ch.state === 'stopped') return 'stopped';
  return ch.ingest_live ? 'live' : 'waiting';
}

function makeChannel(id) {
  const section = el('section', { class: 'channel', 'data-channel': id, 'aria-labelledby': `ch-${id}` });
  section.append(
    el('h2', { id: `ch-${id}`, text: id }),
    el('p', {},
      'Ingest: ', el('span', { class: 'state ingest-state' }), ' ',
      el('span', { class: 'ingest-name' }), ', ',
      el('span', { class: 'kbps' }), ' kbit/s in'),
    el('p', { class: 'sources', hidden: '' }, 'Sources: ', el('span', { class: 'source-list' })),
    el('table', { class: 'engines' },
      el('caption', { text: 'Engines' }),
      el('thead', {}, el('tr', {}, ...['Engine', 'State', 'Ladder', 'Speed', 'Input lag', 'Newest segment', 'Restarts', 'Dropped frames']
        .map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody')),
    el('table', { class: 'distributions' },
      el('caption', { text: 'Distributions' }),
      el('thead', {}, el('tr', {}, ...['Distribution', 'Viewers', 'Countries', 'Devices', 'Sent to', 'Player']
        .map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody')));
  return section;
}

function updateChannel(section, ch) {
  const state = ingestState(ch);
  const ingest = section.querySelector('.ingest-state');
  ingest.textContent = state;
  ingest.className = `state ingest-state ${state}`;
  section.querySelector('.ingest-name').textContent = ch.active_ingest || 'none';
  section.querySelector('.kbps').textContent = String(ch.input_kbps);

  // Extra audio tracks (live or silent) and camera angles (playing or away).
  const sources = Object.entries(ch.sources || {});
  section.querySelector('p.sources').hidden = sources.length === 0;
  section.querySelector('.source-list').replaceChildren(...sources.flatMap(([id, s], i) => {
    const angle = s.kind === 'video';
    const state = angle ? (s.angle && s.angle.playing ? 'playing' : 'away') : (s.live ? 'live' : 'silent');
    const what = angle ? 'camera angle' : (s.language || 'audio');
    return [
      i > 0 ? ', ' : '',
      el('span', { 'data-source': id, class: `source state ${s.live ? 'live' : 'waiting'}`,
        text: `${s.name} (${what}): ${state}` }),
    ];
  }));

  const engines = section.querySelector('table.engines tbody');
  engines.replaceChildren(...Object.entries(ch.engines).map(([id, e]) => {
    const newest = breakdown(e.newest_segment);
    return el('tr', { 'data-engine': id },
      el('th', { scope: 'row', text: id }),
      stateCell(e.state),
      el('td', { text: e.ladder || '\u2014' }),
      el('td', { class: 'num speed', text: e.speed === undefined ? '\u2014' : `${e.speed.toFixed(2)}x` }),
      el('td', { class: 'num', text: e.input_lag_ms === undefined ? '\u2014' : `${e.input_lag_ms} ms` }),
      el('td', { class: 'num newest', text: newest }),
      el('td', { class: 'num', text: String(e.restarts ?? 0) }),
      el('td', { class: 'num', text: String(e.dropped_frames ?? 0) }));
  }));

  const dists = section.querySelector('table.distributions tbody');
  const seen = new Set();
  for (const [id, d] of Object.entries(ch.distributions)) {
    seen.add(id);
    let row = dists.querySelector(`tr[data-dist="${CSS.escape(id)}"]`);
    if (!row) {
      row = el('tr', { 'data-dist': id },
        el('th', { scope: 'row', text: id }),
        el('td', { class: 'num viewers' }),
        el('td', { class: 'countries' }),
        el('td', { class: 'devices' }),
        el('td', { class: 'sent' }),
        el('td', { class: 'player' }, playButton(id)));
      dists.append(row);
    }
    row.querySelector('.viewers').textContent = d.enabled ? String(d.viewers) : 'disabled';
    row.querySelector('.countries').textContent = breakdown(d.countries);
    row.querySelector('.devices').textContent = breakdown(d.devices);
    row.querySelector('.sent').textContent = breakdown(d.sent_to);
    row.querySelector('button.play').disabled = !d.enabled || ch.state === 'stopped';
  }
  for (const row of dists.querySelectorAll('tr[data-dist]')) {
    if (!seen.has(row.dataset.dist)) {
      stopPlayer(row.querySelector('td.player'));
      row.remove();
    }
  }
}

function playButton(dist) {
  const button = el('button', { type: 'button', class: 'play', 'aria-pressed': 'false', text: 'Play' });
  button.addEventListener('click', () => {
    const cell = button.closest('td');
    if (button.getAttribute('aria-pressed') === 'true') {
      stopPlayer(cell);
    } else {
      startPlayer(cell, dist);
    }
  });
  return button;
}

/** Plays the distribution's CMAF output, or its TS output when CMAF is not enabled. */
function startPlayer(cell, dist) {
  const button = cell.querySelector('button.play');
  button.setAttribute('aria-pressed', 'true');
  button.textContent = 'Stop';
  const video = el('video', { controls: '', playsinline: '', 'aria-label': `Live player of ${dist}` });
  video.muted = true;
  video.autoplay = true;
  const message = el('p', { class: 'player-error', role: 'alert' });
  cell.append(video, message);
  const outputs = ['cmaf', 'ts'];
  const play = () => {
    const url = `/live/${encodeURIComponent(dist)}/${outputs[0]}/index.m3u8`;
    if (window.Hls && Hls.isSupported()) {
      const hls = new Hls({ lowLatencyMode: true });
      cell.hls = hls;
      hls.on(Hls.Events.ERROR, (_, data) => {
        if (!data.fatal) return;
        hls.destroy();
        cell.hls = null;
        const status = data.response && data.response.code;
        if (data.details === Hls.ErrorDetails.MANIFEST_LOAD_ERROR && status === 404 && outputs.length > 1) {
          outputs.shift();
          play();
        } else if (data.details === Hls.ErrorDetails.MANIFEST_LOAD_ERROR && status === 503) {
          // Not live yet (or the channel is stopped): try again while the player is on.
          message.textContent = 'Waiting for the stream\u2026';
          cell.retry = setTimeout(() => {
            message.textContent = '';
            play();
          }, 2000);
        } else {
          message.textContent = `Cannot play: ${data.details}${status ? ` (HTTP ${status})` : ''}`;
        }
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
      video.src = url;
    } else {
      message.textContent = 'This browser cannot play HLS.';
    }
    video.play().catch(() => {});
  };
  play();
}

function stopPlayer(cell) {
  clearTimeout(cell.retry);
  if (cell.hls) {
    cell.hls.destroy();
    cell.hls = null;
  }
  for (const node of cell.querySelectorAll('video, .player-error')) node.remove();
  const button = cell.querySelector('button.play');
  if (button) {
    button.setAttribute('aria-pressed', 'false');
    button.textContent = 'Play';
  }
}

function render(status) {
  const ids = Object.keys(status.channels);
  let live = 0;
  let viewers = 0;
  for (const id of ids) {
    const ch = status.channels[id];
    let section = channelsEl.querySelector(`section[data-channel="${CSS.escape(id)}"]`);
    if (!section) {
      section = makeChannel(id);
      channelsEl.append(section);
    }
    updateChannel(section, ch);
    if (ingestState(ch) === 'live') live += 1;
    for (const d of Object.values(ch.distributions)) viewers += d.viewers;
  }
  for (const section of channelsEl.querySelectorAll('section[data-channel]')) {
    if (!ids.includes(section.dataset.channel)) {
      for (const cell of section.querySelectorAll('td.player')) stopPlayer(cell);
      section.remove();
    }
  }
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  summary.textContent = `${plural(ids.length, 'channel')}, ${live} live, ${plural(viewers, 'viewer')}; updated ${new Date().toLocaleTimeString()}`;
}

async function refresh() {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const res = await fetch('/api/v1/status', { headers, cache: 'no-store' });
    if (res.status === 403) {
      tokenForm.hidden = false;
      summary.textContent = 'The status needs an admin token (api.public_status is false).';
      return;
    }
    if (!res.ok) {
      summary.textContent = `Status unavailable (HTTP ${res.status}).`;
      return;
    }
    tokenForm.hidden = true;
    render(await res.json());
  } catch (e) {
    summary.textContent = `Status unavailable: ${e.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
