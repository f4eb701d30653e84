// The portal in a real browser: headless Chromium driven by playwright-core, pages checked
// with axe-core. Run by tests/e2e/portal.rs with PORTAL, TENANT, OUT (screenshots) and
// NODE_MODULES (where playwright-core and @axe-core/playwright are installed).
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const require = createRequire(path.join(process.env.NODE_MODULES, 'x.js'));
const { chromium } = require('playwright-core');
const { default: AxeBuilder } = require('@axe-core/playwright');

const PORTAL = process.env.PORTAL;
const TENANT = process.env.TENANT;
const OUT = process.env.OUT;
const PASSWORD = 'spm-local';
fs.mkdirSync(OUT, { recursive: true });

const results = [];
function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  results.push(what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
});

async function axe(page, name) {
  const r = await new AxeBuilder({ page }).analyze();
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of r.violations) console.log(`axe ${name}: ${v.impact} ${v.id} (${v.nodes.length}) ${v.help}`);
  check(bad.length === 0, `axe: no serious or critical violations on ${name}`);
}

async function shots(page, name) {
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.screenshot({ path: path.join(OUT, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize({ width: 375, height: 800 });
  await page.screenshot({ path: path.join(OUT, `${name}-375.png`), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  check(!overflow, `${name} fits 375 px without sideways scrolling`);
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function signIn(email, locale = 'en-US') {
  const ctx = await browser.newContext({ locale });
  const page = await ctx.newPage();
  await page.goto(`${PORTAL}/`);
  await page.fill('#company', TENANT);
  await page.press('#company', 'Enter');
  await page.waitForSelector('#login');
  await page.fill('#login', email);
  await page.fill('#password', PASSWORD);
  await page.click('button[type=submit]');
  await page.waitForLoadState('load');
  return { ctx, page };
}

try {
  // The start page.
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(`${PORTAL}/`);
    await axe(page, 'start');
    await shots(page, 'start');
    await page.fill('#company', 'no-such-company');
    await page.press('#company', 'Enter');
    await page.waitForSelector('#company-error');
    check((await page.textContent('#company-error')).includes('No sign-in'), 'an unknown company says what to check');
    await ctx.close();
  }

  // A rep: her numbers, a line's calculation, a dispute.
  const { ctx, page } = await signIn('ana@example.com');
  check(page.url() === `${PORTAL}/t/${TENANT}/`, `ana lands on her page (${page.url()})`);
  const total = await page.textContent('#total');
  check(/EUR/.test(total), `her earnings show with the currency (${total})`);
  await axe(page, 'rep home');
  await shots(page, 'rep-home');

  // Live: the page follows her notifications. The test submits a deal once we say READY;
  // the total and the feed change without a reload.
  await page.waitForSelector('html[data-live=open]', { timeout: 10000 });
  const before = await page.textContent('#total');
  const marker = await page.evaluate(() => { window.__noReload = true; return true; });
  const t0 = Date.now();
  console.log('READY');
  await page.waitForFunction((b) => document.querySelector('#total').textContent !== b, before, { timeout: 30000 });
  const liveMs = Date.now() - t0;
  await page.waitForSelector('#feed-list li', { timeout: 10000 });
  check(marker && (await page.evaluate(() => window.__noReload === true)), 'the page was not reloaded');
  check(true, `a new deal changed the open page's total in ${liveMs} ms (from ${before} to ${await page.textContent('#total')}), feed: ${await page.textContent('#feed-list li')}`);
  await shots(page, 'rep-home-live');
  const link = page.locator('table a').first();
  const lineKey = (await link.textContent()).trim();
  await link.click();
  await page.waitForSelector('#trace');
  check((await page.textContent('h1')).trim() === lineKey, 'the line page is the line clicked');
  check((await page.locator('.trace div').count()) > 0, 'the calculation trace is shown');
  await axe(page, 'line');
  await shots(page, 'line');
  const lineUrl = page.url();
  await page.fill('#reason', 'The deal was split 50/50, not 100%.');
  await page.click('form.card button[type=submit]');
  await page.waitForSelector('.notice');
  check((await page.textContent('.notice')).includes('sent'), 'the dispute was sent');

  // A form without the session's CSRF token changes nothing.
  const forged = await page.request.post(`${lineUrl}/dispute`, { form: { reason: 'forged' }, maxRedirects: 0 });
  check(forged.status() === 403, `a form without the CSRF token is refused (${forged.status()})`);
  const forged2 = await page.request.post(`${lineUrl}/dispute`, { form: { reason: 'forged', csrf: 'abc' }, maxRedirects: 0 });
  check(forged2.status() === 403, 'a wrong CSRF token is refused');

  // A peer's page is refused, and says so.
  const peer = await page.goto(`${PORTAL}/t/${TENANT}/reps/bo`);
  check(peer.status() === 403, `a peer's page is refused (${peer.status()})`);
  check((await page.textContent('h1')).includes('not yours'), 'the refusal page says what happened');
  await axe(page, 'refusal');

  // Sign-out ends the session: the page wants a sign-in again.
  await page.goto(`${PORTAL}/t/${TENANT}/`);
  await page.click('header form button');
  await page.waitForURL(`${PORTAL}/`);
  const after = await page.goto(`${PORTAL}/t/${TENANT}/`);
  await page.waitForLoadState('load');
  check(!page.url().startsWith(`${PORTAL}/t/`), `after sign-out the portal sends to sign-in (${page.url()})`);
  await ctx.close();

  // A manager: his report's page, and the refusal outside his team.
  {
    const { ctx, page } = await signIn('dee@example.com');
    const mine = await page.goto(`${PORTAL}/t/${TENANT}/reps/ana`);
    check(mine.status() === 200 && /EUR/.test(await page.textContent('#total')), "the manager sees his report's page");
    await axe(page, 'manager report');
    await shots(page, 'manager-report');
    const other = await page.goto(`${PORTAL}/t/${TENANT}/reps/cy`);
    check(other.status() === 403, 'the manager is refused a rep outside his team');
    await ctx.close();
  }

  // Somebody the tenant does not know: a page that says what to do.
  {
    const { ctx, page } = await signIn('nobody@example.com');
    check((await page.textContent('h1')).includes('not set up'), 'a person with no rep is told what to do');
    await axe(page, 'no rep');
    await shots(page, 'no-rep');
    await ctx.close();
  }

  // A session that ran out sends the person to sign in again (a second portal whose
  // sessions last 3 s).
  if (process.env.PORTAL_SHORT) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(`${process.env.PORTAL_SHORT}/t/${TENANT}/login`);
    await page.waitForSelector('#login');
    await page.fill('#login', 'ana@example.com');
    await page.fill('#password', PASSWORD);
    await page.click('button[type=submit]');
    await page.waitForURL(`${process.env.PORTAL_SHORT}/t/${TENANT}/`);
    check(/EUR/.test(await page.textContent('#total')), 'signed in on the short-session portal');
    await page.waitForTimeout(4000);
    await page.goto(`${process.env.PORTAL_SHORT}/t/${TENANT}/`);
    await page.waitForLoadState('load');
    check(!page.url().startsWith(`${process.env.PORTAL_SHORT}/t/`), `an expired session redirects to sign-in (${page.url()})`);
    await ctx.close();
  }

  // Chinese, from the browser's language.
  {
    const { ctx, page } = await signIn('ana@example.com', 'zh-CN');
    check((await page.textContent('#glance')).includes('本期'), 'zh-CN browsers get Chinese');
    check((await page.getAttribute('html', 'lang')) === 'zh-CN', 'the page says its language');
    await axe(page, 'rep home zh');
    await shots(page, 'rep-home-zh');
    await ctx.close();
  }
  console.log(JSON.stringify({ ok: true, checks: results }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, checks: results, error: String(e && e.stack || e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
