// The local OpenID provider of the SPM stack: oidc-provider (a certified OpenID Connect
// server for Node.js) with the people of people.json, on loopback. Started by
// deploy/local/stack; production uses the company's own provider (Okta, Entra ID, Google...).
//
//   OIDC_PORT      port on 127.0.0.1 (default 59400); the issuer is http://127.0.0.1:<port>
//   OIDC_STATE     directory for keys.json (the signing keys, private, made on first start)
//   OIDC_PEOPLE    people file (default: people.json next to this file)
//   OIDC_PORTAL_REDIRECTS  comma-separated redirect URIs of the portal client
//
// Access tokens are JWTs (RFC 9068) for the resource named in the `resource` parameter
// (RFC 8707): their `aud` is that resource, e.g. "urn:spm:acme". They carry `email`.
//
// Key rotation: SIGHUP (or POST /_local/rotate from loopback) adds a new signing key in
// front of the old ones, which stay published so tokens signed with them still verify;
// POST /_local/rotate?retire=1 also drops all but the newest two. The provider keeps
// running; only its in-memory sessions are lost.
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Provider from 'oidc-provider';

const here = path.dirname(fileURLToPath(import.meta.url));
const port = Number(process.env.OIDC_PORT || 59400);
const issuer = `http://127.0.0.1:${port}`;
const stateDir = process.env.OIDC_STATE || here;
const keysFile = path.join(stateDir, 'keys.json');
const peopleFile = process.env.OIDC_PEOPLE || path.join(here, 'people.json');
const people = JSON.parse(fs.readFileSync(peopleFile, 'utf8')).people;
const byLogin = new Map(people.map((p) => [p.email.toLowerCase(), p]));
const portalRedirects = (process.env.OIDC_PORTAL_REDIRECTS || 'http://127.0.0.1:8080/auth/callback')
  .split(',').map((s) => s.trim()).filter(Boolean);

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = `k-${new Date().toISOString().replace(/[-:.TZ]/g, '')}-${crypto.randomBytes(3).toString('hex')}`;
  return {
    ...jwk,
    kid,
    alg: 'RS256',
    use: 'sig',
    // For tests that forge tokens (expired, wrong audience...) with the provider's own key.
    pkcs8: privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
  };
}

function loadKeys() {
  if (fs.existsSync(keysFile)) {
    const keys = JSON.parse(fs.readFileSync(keysFile, 'utf8'));
    if (!keys.cookie_secret) {
      keys.cookie_secret = crypto.randomBytes(32).toString('hex');
      saveKeys(keys);
    }
    return keys;
  }
  const keys = { keys: [newKey()], cookie_secret: crypto.randomBytes(32).toString('hex') };
  saveKeys(keys);
  return keys;
}

function saveKeys(keys) {
  fs.mkdirSync(stateDir, { recursive: true });
  const tmp = `${keysFile}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(keys, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, keysFile);
}

function findAccount(_ctx, id) {
  const p = byLogin.get(String(id).toLowerCase());
  if (!p) return undefined;
  return {
    accountId: p.email.toLowerCase(),
    async claims() {
      return { sub: p.email.toLowerCase(), email: p.email.toLowerCase(), email_verified: true, name: p.name };
    },
  };
}

function build(keys) {
  const jwks = { keys: keys.keys.map(({ pkcs8, ...k }) => k) };
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'spm-cli',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/callback'],
      },
      {
        // The portal. Locally it is a "native" client so that a portal on any loopback
        // port (tests start one per test) may be redirected to; a real provider registers
        // the portal's public https address as a web client instead.
        client_id: 'spm-portal',
        client_secret: process.env.OIDC_PORTAL_SECRET || 'spm-portal-local-secret',
        application_type: 'native',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/auth/callback', ...portalRedirects],
      },
    ],
    jwks,
    findAccount,
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    scopes: ['openid', 'email', 'profile', 'offline_access', 'api'],
    pkce: { required: () => true },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      DeviceCode: 600,
      Grant: 86400,
      Interaction: 600,
      Session: 86400,
      RefreshToken: 86400,
    },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client, oneOf) => oneOf ?? undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => ({
          scope: 'api',
          audience: resource,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    async extraTokenClaims(_ctx, token) {
      if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
      const p = byLogin.get(token.accountId);
      return p ? { email: p.email.toLowerCase(), email_verified: true, name: p.name } : undefined;
    },
    async loadExistingGrant(ctx) {
      // First-party clients: consent is implied; the grant covers what was asked.
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      return undefined;
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    // Stable across rotations: sign-ins under way survive a key rotation.
    cookies: { keys: [keys.cookie_secret] },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Sign-in error', `<p role="alert">${esc(out.error)}: ${esc(out.error_description || '')}</p>`);
    },
  });
  provider.proxy = false;
  return provider;
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)} · SPM local identity provider</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem;color:#1a1a1a}
label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.5rem;font:inherit;box-sizing:border-box}
button{margin-top:1rem;padding:.5rem 1.2rem;font:inherit;background:#1d4ed8;color:#fff;border:0;border-radius:4px}
[role=alert]{color:#b00020}</style></head>
<body><main><h1>${esc(title)}</h1>${body}</main></body></html>`;
}

function loginForm(uid, client, error = '', login = '') {
  return page('Sign in', `<p>to <strong>${esc(client)}</strong> with your company account.</p>
${error ? `<p role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="login">E-mail</label><input id="login" name="login" type="email" required value="${esc(login)}" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button type="submit">Sign in</button></form>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10_000) throw new Error('form too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

let provider = build(loadKeys());
let callback = provider.callback();

function rotate(retire) {
  const keys = loadKeys();
  keys.keys.unshift(newKey());
  if (retire) keys.keys = keys.keys.slice(0, 2);
  saveKeys(keys);
  provider = build(keys);
  callback = provider.callback();
  console.log(`rotated signing key: now ${keys.keys[0].kid} (published: ${keys.keys.map((k) => k.kid).join(', ')})`);
  return keys.keys[0].kid;
}

process.on('SIGHUP', () => rotate(false));

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname === '/_local/info' && req.method === 'GET') {
      // Where this provider keeps its keys: tests of another checkout sharing the stack
      // find them here.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer, keys_file: keysFile, people: people.length }));
      return;
    }
    if (url.pathname === '/_local/rotate' && req.method === 'POST') {
      const kid = rotate(url.searchParams.get('retire') === '1');
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kid }));
      return;
    }
    const m = url.pathname.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (m) {
      const details = await provider.interactionDetails(req, res);
      const client = details.params.client_id;
      if (!m[2] && req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(loginForm(details.uid, client));
        return;
      }
      if (m[2] && req.method === 'POST') {
        const form = await readForm(req);
        const p = byLogin.get(String(form.login || '').trim().toLowerCase());
        if (!p || p.password !== form.password) {
          res.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
          res.end(loginForm(details.uid, client, 'That e-mail and password do not match a person here.', form.login || ''));
          return;
        }
        const accountId = p.email.toLowerCase();
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId, clientId: client });
        grant.addOIDCScope('openid email profile offline_access');
        const resource = details.params.resource;
        for (const r of [].concat(resource || [])) grant.addResourceScope(r, 'api');
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
        return;
      }
    }
    callback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) {
      res.writeHead(400, { 'content-type': 'text/html; charset=utf-8' });
      res.end(page('Sign-in error', `<p role="alert">${esc(err.message)}</p>`));
    }
  }
});

server.listen(port, '127.0.0.1', () => console.log(`oidc provider ${issuer} (${people.length} people)`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
