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
  // 10 000.00 of a 10 000 quota: the next tier is 10% from 150%, 5 000.00 away.
  const next = await page.textContent('#next-tier');
  check(next.includes('10%') && next.includes('5,000.00 EUR'), `the next tier and the revenue that reaches it (${next.trim()})`);
  check((await page.locator('.chart .bar').count()) === 6, 'the chart shows six periods');
  check((await page.locator('table.narrow tbody tr').count()) > 0, 'the score breakdown or chart table has rows');
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
  await page.goto(`${PORTAL}/t/${TENANT}/`);
  check((await page.textContent('#my-disputes + ul')).includes('open'), 'her open question is listed on her page');

  // The estimator: what a deal would earn; a bad amount says what to fix beside the field.
  await page.fill('#amount', '5000');
  await page.click('form[action$="/whatif"] button');
  await page.waitForSelector('#delta');
  const delta = await page.textContent('#delta');
  check(/\+[\d,]+\.\d\d EUR/.test(delta) && delta !== '+0.00 EUR', `the what-if says what the deal adds (${delta})`);
  await axe(page, 'what-if');
  await shots(page, 'whatif');
  const badWhatIf = await page.goto(`${PORTAL}/t/${TENANT}/whatif?amount=lots`);
  check(badWhatIf.status() === 422 && (await page.getAttribute('#amount', 'aria-invalid')) === 'true', 'a bad what-if amount is marked on its field');
  check((await page.textContent('#amount-error')).length > 5, `and says why (${await page.textContent('#amount-error')})`);

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

  check((await page.locator('nav.sections a[href$="/audit"]').count()) === 0, 'a rep has no audit section');
  const repAudit = await page.goto(`${PORTAL}/t/${TENANT}/audit`);
  check(repAudit.status() === 403, `a rep is refused the audit trail (${repAudit.status()})`);

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
    // His team: figures, leaderboard of his reports only, alerts, calibration.
    await page.goto(`${PORTAL}/t/${TENANT}/team`);
    const board = await page.textContent('.board');
    check(/ana/i.test(board) && /bo/i.test(board) && !/cy/i.test(board), `the team leaderboard holds his reports only (${board.replace(/\s+/g, ' ').trim()})`);
    check((await page.locator('#calibration').count()) === 1 && (await page.locator('#alerts').count()) === 1, 'the team page has alerts and goal calibration');
    check((await page.textContent('.notice')).includes('1'), 'one open question waits for him');
    await axe(page, 'team');
    await shots(page, 'team');
    // The dispute queue: a bad adjustment is refused beside the form, then he accepts.
    await page.goto(`${PORTAL}/t/${TENANT}/disputes`);
    check((await page.locator('section.dispute').count()) === 1, 'his queue holds the one question');
    await page.fill('section.dispute input[name=adjustment]', 'fifty');
    await page.click('section.dispute button[type=submit]');
    await page.waitForSelector('section.dispute .error');
    check((await page.getAttribute('section.dispute input[name=adjustment]', 'aria-invalid')) === 'true', 'a bad adjustment is marked on its field');
    await axe(page, 'disputes with an error');
    await page.fill('section.dispute input[name=adjustment]', '50.00');
    await page.fill('section.dispute textarea', 'Split corrected: half of the deal.');
    await page.click('section.dispute button[type=submit]');
    await page.waitForSelector('.notice');
    check((await page.textContent('section.dispute .status')).includes('accepted'), 'the question is answered and accepted');
    await shots(page, 'disputes');
    await ctx.close();
  }

  // A comp admin: plans, a draft simulated against the current plan, a bad field beside
  // the field and nothing saved, a new version saved; periods closed and paid.
  {
    const { ctx, page } = await signIn('eve@example.com');
    await page.click('nav.sections a[href$="/plans"]');
    await page.waitForSelector('h1');
    check((await page.locator('section table tbody tr').count()) === 1, 'plan ae has one version');
    await axe(page, 'plans');
    await shots(page, 'plans');
    await page.click('a[href*="/plans/edit?plan=ae"]');
    await page.waitForSelector('#f-commission-quota');
    check((await page.inputValue('#f-commission-quota')) === '10000', 'the form starts from the current version');
    await page.fill('#f-commission-tiers-0--rate', '0.06');
    await page.click('button[value=simulate]');
    await page.waitForSelector('#simulation');
    const rows = await page.locator('#simulation tbody tr').allTextContents();
    check(rows.length === 3, `the simulation lists each rep (${rows.length})`);
    const anaRow = rows.find((r) => r.includes('ana')) || '';
    check(anaRow.includes('100.00'), `ana earns 100.00 more under the draft (${anaRow.replace(/\s+/g, ' ')})`);
    check((await page.inputValue('#f-commission-tiers-0--rate')) === '0.06', 'the draft stays in the form');
    await axe(page, 'simulation');
    await shots(page, 'simulation');
    // A bad field: its error beside it, the summary links to it, nothing saved.
    await page.fill('#f-commission-quota', '-5');
    await page.click('button[value=save]');
    await page.waitForSelector('#f-commission-quota-error');
    check((await page.getAttribute('#f-commission-quota', 'aria-invalid')) === 'true', 'the bad quota is marked invalid');
    check((await page.textContent('#f-commission-quota-error')).includes('greater than zero'), `its error is beside it (${await page.textContent('#f-commission-quota-error')})`);
    check((await page.locator('#errors a[href="#f-commission-quota"]').count()) === 1, 'the summary links to the field');
    await axe(page, 'plan with an error');
    await shots(page, 'plan-error');
    await page.goto(`${PORTAL}/t/${TENANT}/plans`);
    check((await page.locator('section table tbody tr').count()) === 1, 'the bad version changed nothing');
    const forgedPlan = await page.request.post(`${PORTAL}/t/${TENANT}/plans`, { form: { plan_id: 'ae', action: 'save' }, maxRedirects: 0 });
    check(forgedPlan.status() === 403, 'a plan form without the CSRF token is refused');
    // A good version is saved.
    await page.click('a[href*="/plans/edit?plan=ae"]');
    await page.fill('#f-name', 'AE (2027 rates)');
    await page.fill('#f-commission-tiers-0--rate', '0.06');
    await page.click('button[value=save]');
    await page.waitForSelector('.notice');
    check((await page.textContent('.notice')).includes('version 2'), 'the new version is saved');
    // A third version as a draft, run in shadow from the plans page, compared with the live one.
    await page.click('a[href*="/plans/edit?plan=ae"]');
    await page.fill('#f-commission-tiers-0--rate', '0.07');
    await page.click('button[value=draft]');
    await page.waitForSelector('.notice');
    check((await page.textContent('.notice')).includes('version 3'), 'the draft is saved as version 3');
    check((await page.textContent('[data-state="3"]')).includes('Draft'), 'version 3 is a draft');
    check((await page.textContent('[data-state="2"]')).includes('Live'), 'version 2 is live');
    await page.click('form[action$="/plans/ae/3/state"] button[value=shadow]');
    await page.waitForSelector('.notice');
    check((await page.textContent('[data-state="3"]')).includes('In shadow'), 'version 3 runs in shadow');
    await axe(page, 'plans with a shadow version');
    await page.click('a[href$="/plans/ae/3/compare"]');
    await page.waitForSelector('h1');
    check((await page.textContent('h1')).includes('against the live plans'), 'the comparison opens');
    const cmp = await page.locator('table').first().locator('tbody tr').allTextContents();
    const anaCmp = cmp.find((r) => r.includes('ana')) || '';
    check(anaCmp.length > 0, `ana is compared (${cmp.map((r) => r.replace(/\s+/g, ' ')).join(' | ')})`);
    await axe(page, 'compare');
    await shots(page, 'compare');
    // Going live without approval is not a move the page offers, and approving one's own
    // proposal is refused by the service with its reason.
    await page.goto(`${PORTAL}/t/${TENANT}/plans`);
    await page.click('form[action$="/plans/ae/3/state"] button[value=propose]');
    await page.waitForSelector('.notice');
    await page.click('form[action$="/plans/ae/3/state"] button[value=approve]');
    await page.waitForSelector('h1');
    check((await page.textContent('main')).includes('someone else must approve it'), `the proposer cannot approve (${(await page.textContent('main')).replace(/\s+/g, ' ').slice(0, 200)})`);
    // Periods: last month closed, refused twice, then paid; a bad key said beside it.
    await page.click('nav.sections a[href$="/periods"]');
    await page.waitForSelector('#key');
    const key = await page.inputValue('#key');
    await page.click('button[value=close]');
    await page.waitForSelector('#period-notice');
    check((await page.textContent('#period-notice')).includes(`Closed ${key}`), `last month ${key} closed`);
    await page.click('button[value=close]');
    await page.waitForSelector('#key-error');
    check((await page.textContent('#key-error')).includes('already closed'), 'closing it again says it is closed');
    await page.click('button[value=paid]');
    await page.waitForSelector('#period-notice');
    check((await page.textContent('#period-notice')).includes('paid'), `${key} marked paid`);
    await page.fill('#key', '2026-13');
    await page.click('button[value=close]');
    await page.waitForSelector('#key-error');
    check((await page.getAttribute('#key', 'aria-invalid')) === 'true', 'a bad period key is marked on its field');
    await axe(page, 'periods');
    await shots(page, 'periods');

    // The audit trail: her plan version and the period's close and payment, by her.
    await page.click('nav.sections a[href$="/audit"]');
    await page.waitForSelector('#audit-events');
    const trail = await page.textContent('#audit-events');
    check(trail.includes('plan.put') && trail.includes('period.close') && trail.includes('period.pay'), 'the audit trail lists the plan saved, the close and the payment');
    check(/person:eve@/.test(trail), `each change names who made it (${trail.replace(/\s+/g, ' ').slice(0, 160)})`);
    await page.fill('#action', 'period.');
    await page.click('.filters button');
    await page.waitForSelector('#audit-events');
    const periodsOnly = await page.locator('#audit-events tbody tr').count();
    check(periodsOnly === 2 && !(await page.textContent('#audit-events')).includes('plan.put'), `an action prefix filters the trail (${periodsOnly} rows)`);
    await page.locator('#audit-events details summary').first().click();
    check((await page.locator('#audit-events details[open] pre').count()) >= 1, 'a change opens to its before and after');
    await page.fill('#since', 'yesterday');
    await page.click('.filters button');
    await page.waitForSelector('#since-error');
    check((await page.getAttribute('#since', 'aria-invalid')) === 'true', 'a bad date is marked on its field');
    await page.click('#verify');
    await page.waitForSelector('#checks');
    const checks = await page.textContent('#checks');
    check((checks.match(/Intact/g) || []).length === 5 && !checks.includes('Broken'), `the ledger and the four trails verify (${checks.replace(/\s+/g, ' ').trim().slice(0, 200)})`);
    await axe(page, 'audit');
    await shots(page, 'audit');
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
