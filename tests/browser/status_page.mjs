// The status page in a real browser: Debian's headless Chromium driven by
// playwright-core (no browser download; /usr/bin/chromium).
//
//   node tests/browser/status_page.mjs BASE_URL KEY OUT_DIR [SCREENSHOT...]
//
// BASE_URL  e.g. http://127.0.0.1:PORT/pidlock-admin (PidLockStatusActions On)
// KEY       the key held for writing (by a request whose URI has ?who=holder)
//           with one writer waiting behind it (?who=waiter)
// OUT_DIR   a fresh temp dir: the browser profile and the screenshot go there
// SCREENSHOT further paths the screenshot is copied to (docs/status-page.png)
//
// Prints "PASS name" or "FAIL name: reason" per check and exits 1 on any
// failure. Every wait is bounded. tests/browser/run.py starts the server and
// holds the locks; it runs this script.

import { copyFileSync, mkdirSync, mkdtempSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const [baseUrl, key, outDir, ...copies] = process.argv.slice(2);
if (!baseUrl || !key || !outDir) {
  console.error('usage: node status_page.mjs BASE_URL KEY OUT_DIR [SCREENSHOT...]');
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-quic'];
const STEP_MS = 15000;      // any single browser action
const POLL_MS = 20000;      // a bounded reload loop
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

let passed = 0;
let failed = 0;
function pass(name) { passed++; console.log(`PASS ${name}`); }
function fail(name, why) { failed++; console.log(`FAIL ${name}: ${why}`); }
function check(name, cond, why) { if (cond) pass(name); else fail(name, why()); return cond; }
const show = (v) => JSON.stringify(v);

// Everything the page's lock table says, read in the page itself.
async function readLocks(page) {
  return page.evaluate(() => {
    const table = document.querySelector('table.locks');
    const h2 = [...document.querySelectorAll('h2')].find((x) => x.textContent.startsWith('Locks'));
    const heading = h2 ? h2.textContent : null;
    const none = [...document.querySelectorAll('p')].some((p) => p.textContent === 'No locks are held.');
    if (!table) return { table: false, none, heading, rows: [], injected: 0, text: document.body.innerText.slice(0, 800) };
    const all = [...table.querySelectorAll('tr')];
    const head = all.find((tr) => tr.querySelector('th'));
    const full = head ? head.cells.length : 0;   // a lock's first row has every column
    const rows = all.filter((tr) => tr.querySelector('td'));
    return {
      table: true,
      none,
      heading,
      injected: table.querySelectorAll('b, script, img, iframe').length,
      rows: rows.map((tr) => {
        const cells = [...tr.cells];
        const keyCell = cells.length === full ? cells[0] : null;
        return {
          cls: tr.className,
          key: keyCell ? keyCell.textContent : null,
          keyHtml: keyCell ? keyCell.innerHTML : null,
          texts: cells.map((c) => c.textContent),
          state: cells.map((c) => c.textContent).find((t) => t === 'holding' || t === 'waiting') || null,
          uri: (cells.map((c) => c.textContent).find((t) => t.startsWith('/')) || null),
          formKey: (tr.querySelector('form input[name="key"]') || {}).value ?? null,
          nonce: (tr.querySelector('form input[name="nonce"]') || {}).value ?? null,
          button: (tr.querySelector('form button') || {}).textContent ?? null,
        };
      }),
    };
  });
}

const holderRow = (t) => t.rows.find((r) => r.state === 'holding' && r.uri && r.uri.includes('who=holder'));
const waiterHolding = (t) => t.rows.find((r) => r.state === 'holding' && r.uri && r.uri.includes('who=waiter'));

async function main() {
  mkdirSync(outDir, { recursive: true });
  const profile = mkdtempSync(join(outDir, 'chromium-profile-'));
  // launchPersistentContext: a fresh --user-data-dir of our own (Playwright
  // refuses the flag in args).
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1600, height: 560 },
    deviceScaleFactor: 1,
    timeout: 60000,
    env: { ...process.env, TZ: 'UTC' },
  });
  try {
    pass(`chromium ${ctx.browser() ? ctx.browser().version() : '(persistent context)'} started`);
    const page = ctx.pages()[0] || await ctx.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.setDefaultNavigationTimeout(STEP_MS);
    const consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));

    // 1. The page with the held lock and its waiter.
    const resp = await page.goto(baseUrl, { waitUntil: 'load' });
    check('page loads', resp && resp.status() === 200,
      () => `GET ${baseUrl} -> ${resp && resp.status()}`);
    check('page is HTML', (resp.headers()['content-type'] || '').startsWith('text/html'),
      () => `content-type ${resp.headers()['content-type']}`);
    const title = await page.title();
    check('title', title === 'mod_pidlock status', () => `title ${show(title)}`);

    const t = await readLocks(page);
    if (!check('lock table present', t.table, () => `no table.locks; page says ${show(t.text)}`)) return;
    const keyRows = t.rows.filter((r) => r.key !== null);
    const mine = keyRows.filter((r) => r.key === key);
    check('key shown escaped: one row whose text is the key', mine.length === 1,
      () => `rows with key cells: ${show(keyRows.map((r) => r.key))}, wanted ${show(key)}`);
    check('no element injected by the key', t.injected === 0,
      () => `${t.injected} b/script/img/iframe element(s) inside the table; key cell HTML ${show(mine[0] && mine[0].keyHtml)}`);
    check('key cell HTML is escaped', mine.length === 1 && mine[0].keyHtml.includes('&lt;b&gt;') && !mine[0].keyHtml.includes('<b>'),
      () => `key cell HTML ${show(mine[0] && mine[0].keyHtml)}`);
    const h = holderRow(t);
    check('holder row: write, holding, PUT', h && h.texts.includes('write') && h.texts.includes('PUT'),
      () => `rows ${show(t.rows.map((r) => r.texts))}`);
    const w = t.rows.find((r) => r.state === 'waiting' && r.uri && r.uri.includes('who=waiter'));
    check('waiting writer row', w && w.cls.includes('waiting') && w.texts.includes('write'),
      () => `rows ${show(t.rows.map((r) => r.texts))}`);
    check('break form carries the key and a nonce',
      h && h.formKey === key && /^[0-9a-f]{32}$/.test(h.nonce || '') && h.button === 'Break',
      () => `form key ${show(h && h.formKey)}, nonce ${show(h && h.nonce)}, button ${show(h && h.button)}`);

    // 2. The screenshot (the README's): the lock held, the writer waiting.
    const shot = join(outDir, 'status-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    for (const c of copies) {
      mkdirSync(dirname(c), { recursive: true });
      copyFileSync(shot, c);
    }
    pass(`screenshot ${[shot, ...copies].join(', ')}`);

    // 3. Break: click the row's button (a plain form POST); the handler
    // answers 303 back to the page.
    if (!h) { fail('break', 'no holder row to click'); return; }
    const row = page.locator('table.locks tr').filter({ has: page.locator('input[name="key"]') })
      .filter({ has: page.getByRole('button', { name: 'Break' }) });
    const n = await row.count();
    if (!check('one Break button', n === 1, () => `${n} rows with a Break button`)) return;
    const postSeen = page.waitForResponse((r) => r.request().method() === 'POST', { timeout: STEP_MS });
    const navDone = page.waitForNavigation({ waitUntil: 'load', timeout: STEP_MS });
    await row.getByRole('button', { name: 'Break' }).click();
    const post = await postSeen;
    const landed = await navDone;
    const preq = post.request();
    const reqHeaders = await preq.allHeaders();
    const postInfo = () => `POST ${preq.url()} headers ${show(reqHeaders)} body ${show(preq.postData())} -> ` +
      `${post.status()} headers ${show(post.headers())}`;
    console.log(`# ${postInfo()}`);
    check('break POST answered 303', post.status() === 303, postInfo);
    const loc = post.headers().location;
    check('303 Location leads back to the page',
      loc && new URL(loc, preq.url()).href.split('?')[0] === new URL(baseUrl).href.split('?')[0],
      () => `Location ${show(loc)} for page ${baseUrl}`);
    check('POST was a form post with the nonce',
      (reqHeaders['content-type'] || '').startsWith('application/x-www-form-urlencoded') &&
        (preq.postData() || '').includes(`nonce=${h.nonce}`),
      postInfo);
    check('browser landed on the page again', landed && landed.status() === 200 && landed.request().method() === 'GET' &&
      page.url().split('?')[0] === new URL(baseUrl).href.split('?')[0],
    () => `landed ${landed && landed.status()} ${page.url()}`);

    // 4. The broken holder is gone; the waiting writer gets in; then the
    // table empties. Reloads are bounded.
    let after = await readLocks(page);
    check('broken holder no longer shown', (after.table || after.none) && !holderRow(after),
      () => `rows ${show(after.rows.map((r) => r.texts))}`);
    const summary = await page.evaluate(() => {
      const th = [...document.querySelectorAll('table.summary th')].find((x) => x.textContent.startsWith('Reaped / broken'));
      return th ? th.nextElementSibling.textContent : null;
    });
    check('page counts the break', summary && summary.split('/').map((s) => s.trim())[1] === '1',
      () => `Reaped / broken / repairs: ${show(summary)}`);

    let sawWaiter = !!waiterHolding(after);
    const isEmpty = (x) => !x.table && x.none && x.heading === 'Locks (0 keys, 0 holders, 0 waiting)';
    let empty = isEmpty(after);
    const deadline = Date.now() + POLL_MS;
    while (!empty && Date.now() < deadline) {
      await sleep(200);
      await page.reload({ waitUntil: 'load' });
      after = await readLocks(page);
      if (holderRow(after)) { fail('broken holder stays gone', `shown again: ${show(after.rows.map((r) => r.texts))}`); break; }
      sawWaiter = sawWaiter || !!waiterHolding(after);
      empty = isEmpty(after);
    }
    check('waiting writer got the lock', sawWaiter, () => 'the page never showed the waiter holding');
    check('table empty after the waiter finished', empty,
      () => `after ${POLL_MS} ms: heading ${show(after.heading)}, rows ${show(after.rows.map((r) => r.texts))}`);
    check('no console errors', consoleErrors.length === 0, () => show(consoleErrors));
  } finally {
    await ctx.close();
  }
}

const killer = setTimeout(() => {
  console.log('FAIL browser: overall time limit (120 s) reached');
  process.exit(1);
}, 120000);
try {
  await main();
} catch (e) {
  fail('browser', (e && e.stack) ? e.stack.split('\n').slice(0, 4).join(' | ') : String(e));
}
clearTimeout(killer);
console.log(`browser-js: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
