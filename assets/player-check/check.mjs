// Sluice browser player check: plays Sluice HLS output in headless Chromium with hls.js
// and checks that playback advances, has no fatal errors, and survives rendition switches.
// Usage: node check.mjs [--page URL] [--out DIR] [--seconds N] [--chromium PATH] [STREAM_URL ...]
// Without --page it serves index.html (beside this file) and hls.js (resolved from the
// current directory's node_modules) itself on a free 127.0.0.1 port.
// See README.md beside this file.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

// Packages come from node_modules in the current directory (see README), not from
// beside this file.
const { chromium } = createRequire(path.join(process.cwd(), 'noop.js'))('playwright-core');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  if (i < 0) return def;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
let PAGE = opt('--page', null);
const OUT = opt('--out', './out');
const SECONDS = Number(opt('--seconds', '25'));
// --low-latency: hls.js in lowLatencyMode, and the latency it measures reported.
const LOW_LATENCY = args.includes('--low-latency');
if (LOW_LATENCY) args.splice(args.indexOf('--low-latency'), 1);
const CHROMIUM = opt('--chromium', process.env.CHROMIUM || '/usr/bin/chromium');
const STREAMS = args.length ? args : [
  'http://127.0.0.1:18080/live/demo/cmaf/index.m3u8',
  'http://127.0.0.1:18080/live/demo/ts/index.m3u8',
];
// Two forced switches: an immediate one (hls.currentLevel: flushes the buffer and
// reloads at the new level) and a smooth one (hls.nextLevel: the new rendition's
// fragments are appended after what is buffered, which only plays cleanly when the
// renditions' timestamps and segment boundaries line up).
const SWITCHES = [
  { at: Math.round(SECONDS / 3), mode: 'immediate', pick: (n, cur) => (cur === n - 1 ? 0 : n - 1) },
  { at: Math.round((2 * SECONDS) / 3), mode: 'smooth', pick: (n, cur) => (n > 2 ? (cur === 1 ? 0 : 1) : (cur === 0 ? n - 1 : 0)) },
];
fs.mkdirSync(OUT, { recursive: true });
const sleep = ms => new Promise(r => setTimeout(r, ms));
const r3 = x => +x.toFixed(3);

// Built-in static server for the test page (loopback only).
let pageServer = null;
if (!PAGE) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const require = createRequire(path.join(process.cwd(), 'noop.js'));
  let hlsFile;
  try { hlsFile = require.resolve('hls.js/dist/hls.min.js'); } catch {
    try { hlsFile = createRequire(import.meta.url).resolve('hls.js/dist/hls.min.js'); } catch {
      console.error('hls.js not found: run `npm install hls.js playwright-core` in the current directory'); process.exit(2);
    }
  }
  const files = {
    '/index.html': [path.join(here, 'index.html'), 'text/html; charset=utf-8'],
    '/node_modules/hls.js/dist/hls.min.js': [hlsFile, 'text/javascript'],
  };
  pageServer = http.createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname];
    if (!f) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': f[1] }).end(fs.readFileSync(f[0]));
  });
  await new Promise(r => pageServer.listen(0, '127.0.0.1', r));
  PAGE = `http://127.0.0.1:${pageServer.address().port}/index.html`;
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-player-check-'));
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 960, height: 600 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ],
});

const results = [];
try {
  for (const stream of STREAMS) {
    const label = stream.replace(/^https?:\/\/[^/]+\//, '').replace(/[^A-Za-z0-9]+/g, '_').replace(/_index_m3u8$/, '');
    const page = await browser.newPage();
    const consoleMsgs = [];
    page.on('console', m => { if (m.type() === 'error' || m.type() === 'warning') consoleMsgs.push(`${m.type()}: ${m.text()}`); });
    page.on('pageerror', e => consoleMsgs.push(`pageerror: ${e.message}`));
    await page.goto(`${PAGE}?src=${encodeURIComponent(stream)}${LOW_LATENCY ? '&ll=1' : ''}`);
    const info = await page.evaluate(() => ({
      userAgent: navigator.userAgent, hlsVersion: window.playerState.hlsVersion,
      hlsSupported: window.playerState.hlsSupported, mse: window.playerState.mse,
    }));
    console.log(`\n=== ${stream}`);
    console.log(`${info.userAgent}\nhls.js ${info.hlsVersion}, Hls.isSupported()=${info.hlsSupported}`);
    for (const [c, ok] of Object.entries(info.mse)) console.log(`  MediaSource.isTypeSupported('${c}') = ${ok}`);
    if (!info.mse['video/mp4; codecs="avc1.64001f,mp4a.40.2"']) {
      console.log('  BLOCKED: this Chromium build has no H.264/AAC support in MSE. That is a browser build ' +
        'limitation, not a server result; use a Chromium with proprietary codecs (--chromium PATH).');
      results.push({ stream, pass: false, blocked: true, mse: info.mse, userAgent: info.userAgent });
      await page.close();
      continue;
    }

    const samples = [];
    const switches = [];
    for (let s = 1; s <= SECONDS; s++) {
      await sleep(1000);
      const st = await page.evaluate(() => window.sampleState());
      samples.push(st);
      console.log(`  [${String(s).padStart(2)}s] ct=${st.currentTime.toFixed(2)} ${st.videoWidth}x${st.videoHeight} ` +
        `level=${st.currentLevel} rs=${st.readyState} paused=${st.paused} ` +
        `buf=${JSON.stringify(st.buffered)} dropped=${st.droppedFrames}/${st.totalFrames} ` +
        `aBytes=${st.audioDecodedBytes} lat=${st.latency} err=${st.errors}/${st.fatalErrors}`);
      for (const sw of SWITCHES.filter(x => x.at === s)) {
        const r = await page.evaluate(([mode, pickSrc]) => {
          const pick = eval(pickSrc);
          const n = window.hls.levels.length;
          const from = window.hls.currentLevel;
          if (n < 2) return { from, to: null, levels: n, skipped: 'fewer than 2 levels' };
          const to = pick(n, from);
          if (mode === 'immediate') window.hls.currentLevel = to; else window.hls.nextLevel = to;
          return { from, to, levels: n, atCurrentTime: window.sampleState().currentTime };
        }, [sw.mode, sw.pick.toString()]);
        const rec = { mode: sw.mode, api: sw.mode === 'immediate' ? 'hls.currentLevel' : 'hls.nextLevel', atSecond: s, ...r };
        switches.push(rec);
        console.log(rec.skipped ? `  -> ${rec.api}: skipped (${rec.skipped})` : `  -> ${rec.api} = ${rec.to} (was ${rec.from})`);
      }
    }
    const state = await page.evaluate(() => window.playerState);
    const shot = path.resolve(OUT, `${label}.png`);
    await page.screenshot({ path: shot });
    await page.close();

    const first = samples[0], last = samples[samples.length - 1];
    const advance = last.currentTime - first.currentTime;
    const fatal = state.errors.filter(e => e.fatal);
    // Stalls: 1-second sample intervals (after the first sample) where playback moved < 0.5 s.
    const stalls = [];
    for (let k = 1; k < samples.length; k++) {
      const d = samples[k].currentTime - samples[k - 1].currentTime;
      if (d < 0.5) stalls.push({ second: k + 1, from: samples[k - 1].currentTime, to: samples[k].currentTime });
    }
    const maxBufferedRanges = Math.max(...samples.map(p => p.buffered.length));
    for (const [k, sw] of switches.entries()) {
      const end = k + 1 < switches.length ? switches[k + 1].atSecond : samples.length; // window up to the next switch
      const win = samples.slice(sw.atSecond, end);
      if (sw.skipped) { sw.ok = null; continue; }  // not applicable (single-rendition stream)
      const targetHeight = state.levels[sw.to]?.height;
      sw.levelSwitchedEvent = state.levelSwitches.find(e => e.level === sw.to && e.t >= 0) ? true : false;
      sw.sawTargetVideoSize = win.some(p => p.videoHeight === targetHeight);
      sw.firstSecondAtTargetSize = (win.find(p => p.videoHeight === targetHeight) || {}).t ?? null;
      sw.advanceUntilNextCheck = win.length ? r3(win[win.length - 1].currentTime - samples[sw.atSecond - 1].currentTime) : 0;
      sw.windowSeconds = win.length;
      sw.ok = sw.levelSwitchedEvent && sw.sawTargetVideoSize && sw.advanceUntilNextCheck > win.length * 0.6;
    }
    const switchOk = switches.every(sw => sw.ok !== false);
    const pass = advance > 15 && fatal.length === 0 && last.videoWidth > 0 && switchOk;
    const audioDecoding = last.audioDecodedBytes == null ? null : last.audioDecodedBytes > first.audioDecodedBytes;
    // Latency over the second half of the run (after start-up and the forced switches
    // have settled): hls.js's own estimate (behind the live edge) and behind the
    // server's clock (EXT-X-PROGRAM-DATE-TIME of the frame on screen).
    const stat = (key) => {
      const v = samples.slice(Math.floor(samples.length / 2)).map(p => p[key]).filter(x => x != null).sort((a, b) => a - b);
      return v.length ? { median: v[Math.floor(v.length / 2)], min: v[0], max: v[v.length - 1] } : null;
    };
    const latency = { hls: stat('latency'), wall: stat('wallLatency'), target: stat('targetLatency') };
    const res = {
      stream, pass, advance: r3(advance), fatalErrors: fatal.length, errors: state.errors,
      videoErrors: state.videoErrors, levels: state.levels, audioTracks: state.audioTracks,
      levelSwitches: state.levelSwitches, switches, switchOk, stalls, maxBufferedRanges, audioDecoding, latency,
      screenshot: shot, mse: info.mse, userAgent: info.userAgent, hlsVersion: info.hlsVersion,
      samples, console: consoleMsgs,
    };
    results.push(res);
    console.log(`  levels: ${state.levels.map(l => `${l.index}:${l.width}x${l.height}@${l.bitrate} [${l.codecs}]`).join('  ')}`);
    if (state.audioTracks.length) console.log(`  audio tracks: ${JSON.stringify(state.audioTracks)}`);
    console.log(`  LEVEL_SWITCHED events: ${JSON.stringify(state.levelSwitches)}`);
    console.log(`  latency (s, second half): ${JSON.stringify(latency)}`);
    for (const sw of switches) console.log(`  switch: ${JSON.stringify(sw)}`);
    console.log(`  errors (${state.errors.length}): ${state.errors.length ? '' : 'none'}`);
    for (const e of state.errors) console.log(`    ${JSON.stringify(e)}`);
    if (state.videoErrors.length) console.log(`  video errors: ${JSON.stringify(state.videoErrors)}`);
    if (consoleMsgs.length) console.log(`  console: ${consoleMsgs.slice(0, 20).join(' | ')}`);
    console.log(`  stalls: ${stalls.length ? JSON.stringify(stalls) : 'none'}; max buffered ranges: ${maxBufferedRanges}; audio decoding: ${audioDecoding}`);
    console.log(`  currentTime ${first.currentTime} -> ${last.currentTime} (advance ${advance.toFixed(2)} s), ` +
      `final ${last.videoWidth}x${last.videoHeight}, dropped ${last.droppedFrames}/${last.totalFrames}`);
    console.log(`  screenshot: ${shot}`);
    console.log(`  RESULT: ${pass ? 'PASS' : 'FAIL'}`);
  }
} finally {
  await browser.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
  if (pageServer) pageServer.close();
}
fs.writeFileSync(path.join(OUT, 'results.json'), JSON.stringify(results, null, 2));
const passed = results.filter(r => r.pass).length;
console.log(`\n${passed} passed, ${results.length - passed} failed`);
process.exit(passed === results.length ? 0 : 1);
