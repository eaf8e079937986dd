// Node's fetch through the proxy the environment names (HTTPS_PROXY, HTTP_PROXY), trusting
// NODE_EXTRA_CA_CERTS: undici's EnvHttpProxyAgent, as a Node workload sets it up.
// Usage: node fetch_through_proxy.mjs URL  → prints "<status> <path the upstream saw>".
import { EnvHttpProxyAgent, fetch } from "undici";

const response = await fetch(process.argv[2], { dispatcher: new EnvHttpProxyAgent() });
const body = await response.text();
let seen = body;
try {
  seen = JSON.parse(body).path ?? body;
} catch {
  // not JSON: the body itself
}
console.log(response.status, seen);
