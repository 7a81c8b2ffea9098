// jit-broker's web page (docs/web.md): sign in, see the VMs you may open, open a door from this browser's
// address, watch it count down, extend or close it; approvers answer requests; admins see every open door
// and the audit trail. Everything is built with DOM calls from the API's JSON (no HTML strings).

import { Api, ApiError } from "./api.js";
import { Auth, signInProblem } from "./auth.js";
import { hostOf, isRdp, isSsh, rdpFile, rdpFileName, sshCommand } from "./connect.js";
import { byId, h, show, uid } from "./dom.js";
import { clock, countdown, DURATIONS, durationSeconds, secondsLeft, spoken, stamp } from "./time.js";

const REFRESH_MS = 15000; // lists are read again this often while the page is visible
const OPEN = new Set(["awaiting_approval", "pending", "active"]);
const STATUS_WORDS = {
  awaiting_approval: "Waiting for approval",
  pending: "Opening…",
  active: "Open",
  revoked: "Closed",
  expired: "Expired",
  failed: "Failed",
  denied: "Denied",
  withdrawn: "Withdrawn",
};
const PORT_NAMES = { 22: "SSH", 3389: "RDP", 5432: "PostgreSQL", 1433: "SQL Server", 5985: "WinRM", 5986: "WinRM" };

const state = {
  config: null,
  auth: null,
  api: null,
  me: null,
  vms: [],
  grants: [],
  waiting: [],
  everyone: [],
  shown: {}, // what each list last rendered, so an unchanged refresh leaves the page (and typing) alone
  polling: new Set(),
  auditNext: null,
  names: new Map(), // principal object id -> the name grants carry, for the audit trail
};

// ---------------------------------------------------------------- start

boot().catch((error) => problem(`The page failed to start: ${error.message || error}`));

async function boot() {
  byId("sign-in").addEventListener("click", () => signIn());
  byId("sign-out").addEventListener("click", () => signOut());
  byId("vms-refresh").addEventListener("click", () => act(loadVms));
  byId("grants-refresh").addEventListener("click", () => act(loadGrants));
  byId("everyone-refresh").addEventListener("click", () => act(loadEveryone));
  byId("audit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act(() => loadAudit(false));
  });
  byId("audit-more").addEventListener("click", () => act(() => loadAudit(true)));

  try {
    const response = await fetch("/web/config.json", { credentials: "omit", cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.config = await response.json();
  } catch (error) {
    show(byId("loading"), false);
    problem(`The page could not read its sign-in settings from the broker (${error.message}).`);
    return;
  }
  state.auth = new Auth(state.config);
  let account = null;
  try {
    account = await state.auth.start();
  } catch (error) {
    problem(signInProblem(error));
  }
  show(byId("loading"), false);
  if (!account) {
    show(byId("signed-out"), true);
    return;
  }
  state.api = new Api(() => state.auth.token());
  await signedIn(account);
}

async function signIn() {
  try {
    await state.auth.signIn();
  } catch (error) {
    problem(signInProblem(error));
  }
}

async function signOut() {
  await state.auth.signOut();
  window.location.replace("/");
}

async function signedIn(account) {
  byId("account-name").textContent = account.username || account.name || "";
  show(byId("account"), true);
  try {
    state.me = await state.api.get("/api/v1/whoami");
  } catch (error) {
    problem(words(error));
    return;
  }
  renderMe();
  show(byId("nav"), true);
  for (const id of ["me", "vms", "grants"]) show(byId(id), true);
  await Promise.all([quietly(loadVms), quietly(loadGrants), quietly(loadWaiting), quietly(loadEveryone)]);
  if (mayReadAudit()) {
    show(byId("audit"), true);
    navFor("audit", true);
    await quietly(() => loadAudit(false));
  }
  document.body.dataset.ready = "true"; // every list has its first answer (tests and screenshots wait for it)
  setInterval(tick, 1000);
  setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, REFRESH_MS);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refresh();
  });
}

function refresh() {
  return Promise.all([quietly(loadGrants), quietly(loadWaiting), quietly(loadEveryone)]);
}

// ---------------------------------------------------------------- who am I

function renderMe() {
  const me = state.me;
  byId("me-name").textContent = me.name || me.upn || me.principal;
  byId("me-upn").textContent = me.upn || me.principal;
  byId("me-roles").textContent = me.roles.length ? me.roles.join(", ") : "none";
  const note = byId("me-note");
  if (me.address) {
    byId("me-address").textContent = me.address;
    note.textContent =
      `A door you open here lets in ${me.address} only: the public address the broker sees for this browser. ` +
      "Connect from this same machine or network; from anywhere else, open the door there.";
  } else {
    byId("me-address").textContent = "unknown";
    note.textContent = "The broker cannot tell this browser's address, so it cannot open a door for it.";
  }
}

function isAdmin() {
  return Boolean(state.me && state.me.is_admin);
}

function mayReadAudit() {
  const roles = (state.me && state.me.roles) || [];
  return isAdmin() || roles.includes(state.config.roles.auditor);
}

function isApprover() {
  const roles = (state.me && state.me.roles) || [];
  return roles.includes(state.config.roles.approver);
}

function navFor(what, visible) {
  for (const link of document.querySelectorAll(`nav [data-needs="${what}"]`)) show(link, visible);
}

// ---------------------------------------------------------------- VMs and requests

async function loadVms() {
  const list = byId("vm-list");
  try {
    state.vms = await state.api.all("/api/v1/vms", "vms");
  } catch (error) {
    list.replaceChildren(h("p", { class: "empty" }, words(error)));
    return;
  }
  if (!state.vms.length) {
    list.replaceChildren(h("p", { class: "empty" }, "There is no VM you may open."));
    return;
  }
  list.replaceChildren(...state.vms.map(vmCard));
}

function vmCard(vm) {
  const title = uid("vm");
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const running = vm.power_state === "running";
  const maxSeconds = durationSeconds(vm.max_duration);
  const port = h(
    "select",
    { name: "port" },
    vm.ports.map((p) => h("option", { value: String(p) }, portLabel(p))),
  );
  const duration = h(
    "select",
    { name: "duration" },
    h("option", { value: "" }, "policy default"),
    DURATIONS.filter(([, s]) => maxSeconds === null || s <= maxSeconds).map(([value, s]) =>
      h("option", { value }, spoken(s)),
    ),
  );
  const justification = h("input", {
    name: "justification",
    maxlength: 500,
    autocomplete: "off",
    required: vm.justification_required,
    placeholder: vm.justification_required ? "a ticket or a reason (required)" : "optional: a ticket or a reason",
  });
  const approval = vm.approval_required
    ? `Needs approval: someone with the ${vm.approver_role || "approver"} role must say yes, and the clock starts then.`
    : null;
  const button = h("button", { type: "submit", class: "primary" }, vm.approval_required ? "Ask for approval" : "Request access");
  const form = h(
    "form",
    {
      class: "request",
      "aria-label": `Request access to ${vm.name}`,
      onsubmit: (event) => {
        event.preventDefault();
        const ask = { port: Number(port.value), duration: duration.value, text: justification.value };
        requestAccess(vm, ask, button, error);
      },
    },
    h("label", {}, "Port", port),
    h("label", {}, "For", duration),
    h("label", { class: "wide" }, vm.justification_required ? "Justification (required)" : "Justification", justification),
    h("div", { class: "actions" }, button),
    error,
  );
  return h(
    "article",
    { class: "card vm", "aria-labelledby": title, dataset: { vm: vm.name } },
    h("h3", { id: title }, vm.name),
    h(
      "p",
      { class: "meta" },
      h("span", { class: `badge ${running ? "ok" : "off"}` }, vm.power_state),
      h("span", {}, vm.os),
      h("span", {}, `ports ${vm.ports.join(", ")}`),
      h("span", {}, `up to ${spoken(maxSeconds) || vm.max_duration}`),
      vm.resource_group ? h("span", { class: "dim" }, vm.resource_group) : null,
      vm.approval_required ? h("span", { class: "badge wait" }, "needs approval") : null,
    ),
    approval ? h("p", { class: "approval-note" }, approval) : null,
    form,
  );
}

async function requestAccess(vm, ask, button, error) {
  show(error, false);
  button.disabled = true;
  say(`Asking for ${vm.name} port ${ask.port}…`);
  const body = { vm: vm.id, port: ask.port };
  if (ask.duration) body.duration = ask.duration;
  if (ask.text.trim()) body.justification = ask.text.trim();
  try {
    const answer = await state.api.post("/api/v1/grants", body);
    const grant = answer.body;
    say(answerWords(grant, answer.status));
    if (grant.status === "pending" || grant.status === "awaiting_approval") {
      poll(grant.id, Number(answer.retryAfter) || 2);
    }
    await loadGrants();
    focusGrant(grant.id);
  } catch (error_) {
    error.textContent = words(error_);
    show(error, true);
    say("");
  } finally {
    button.disabled = false;
  }
}

function answerWords(grant, status) {
  const what = `${grant.vm} port ${grant.port}`;
  const warned = grant.warnings.length ? ` Warning: ${grant.warnings.join(" ")}` : "";
  if (grant.status === "awaiting_approval") {
    return `Your request for ${what} waits for an approver. The door opens when someone approves it.${warned}`;
  }
  if (grant.status === "pending") {
    return `Your request for ${what} is recorded; the door is being opened.${warned}`;
  }
  if (status === 200) return `${what} was already open for you; it now closes at ${clock(grant.expires_at)}.${warned}`;
  return `${what} is open for ${grant.source} until ${clock(grant.expires_at)}.${warned}`;
}

/** Follow a grant that is still being opened or waits for an approver until it changes. */
function poll(id, afterSeconds) {
  if (state.polling.has(id)) return;
  state.polling.add(id);
  const again = async (seconds) => {
    await new Promise((resolve) => setTimeout(resolve, Math.max(1, seconds) * 1000));
    let answer;
    try {
      answer = await state.api.call("GET", `/api/v1/grants/${encodeURIComponent(id)}`);
    } catch {
      state.polling.delete(id);
      return;
    }
    const grant = answer.body;
    if (grant.status === "pending" || grant.status === "awaiting_approval") {
      again(grant.status === "pending" ? 2 : 5);
      return;
    }
    state.polling.delete(id);
    say(changedWords(grant));
    await loadGrants();
  };
  again(afterSeconds);
}

function changedWords(grant) {
  const what = `${grant.vm} port ${grant.port}`;
  const by = grant.approval && grant.approval.decided_by_name;
  if (grant.status === "active") {
    return `${what} is open now${by ? `, approved by ${by}` : ""}: until ${clock(grant.expires_at)}.`;
  }
  if (grant.status === "denied") {
    return `${what} was denied${by ? ` by ${by}` : ""}: ${(grant.approval && grant.approval.reason) || grant.reason || "no reason given"}.`;
  }
  return `${what} is ${STATUS_WORDS[grant.status] || grant.status}${grant.reason ? `: ${grant.reason}` : ""}.`;
}

// ---------------------------------------------------------------- my grants

async function loadGrants() {
  const grants = await state.api.all("/api/v1/grants", "grants");
  state.grants = grants;
  remember(grants);
  const open = grants.filter((g) => OPEN.has(g.status));
  const closed = grants.filter((g) => !OPEN.has(g.status)).slice(0, 10);
  for (const g of open) {
    if (g.status === "pending" || g.status === "awaiting_approval") poll(g.id, g.status === "pending" ? 2 : 5);
  }
  if (!changed("grants", open, closed)) return;
  const list = byId("grant-list");
  list.replaceChildren(
    ...(open.length ? open.map(grantCard) : [h("p", { class: "empty" }, "No door is open for you.")]),
  );
  show(byId("closed"), closed.length > 0);
  byId("closed-list").replaceChildren(...closed.map(closedLine));
}

function grantCard(grant) {
  const title = uid("grant");
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const parts = [
    h(
      "div",
      { class: "card-head" },
      h("h3", { id: title }, `${grant.vm} · ${portLabel(grant.port)}`),
      h("span", { class: `badge ${badgeClass(grant.status)}` }, STATUS_WORDS[grant.status] || grant.status),
    ),
  ];
  if (grant.status === "active") {
    parts.push(
      h(
        "p",
        { class: "timer" },
        h("span", { role: "timer", class: "count", dataset: { until: grant.expires_at } }, countdown(grant.expires_at)),
        h("span", {}, ` left · closes at ${clock(grant.expires_at)}`),
      ),
      h("p", {}, "Lets in ", h("strong", {}, grant.source), " only."),
      connectBlock(grant),
    );
  } else if (grant.status === "pending") {
    parts.push(h("p", {}, "The broker is writing the rule into the VM's network security groups…"));
  } else if (grant.status === "awaiting_approval") {
    const approval = grant.approval || {};
    const asked = durationSeconds(approval.requested_duration);
    parts.push(
      h(
        "p",
        {},
        `Asked for ${asked ? spoken(asked) : "the usual time"}, from ${grant.source}. `,
        `The clock starts when someone with the ${approval.approver_role || "approver"} role approves.`,
      ),
      approval.wait_until ? h("p", { class: "dim" }, `Waits until ${clock(approval.wait_until)}.`) : null,
    );
  }
  if (grant.justification) parts.push(h("p", { class: "dim" }, `Justification: ${grant.justification}`));
  if (grant.warnings.length) parts.push(warningList(grant.warnings));
  parts.push(grantActions(grant, error), error);
  return h(
    "article",
    { class: `card grant ${grant.status}`, "aria-labelledby": title, tabindex: -1, dataset: { grant: grant.id } },
    ...parts,
  );
}

function connectBlock(grant) {
  const host = hostOf(grant);
  if (!host) {
    return h("p", { class: "dim" }, "The VM has no public address the broker knows of: connect the way you usually do.");
  }
  if (isSsh(grant)) {
    const command = sshCommand(grant);
    const label = uid("ssh");
    const code = h("code", { class: "command", "aria-labelledby": label }, command);
    return h(
      "div",
      { class: "connect" },
      h("span", { id: label, class: "connect-label" }, "Connect with"),
      h("div", { class: "copy-row" },
        code,
        h("button", { type: "button", "aria-label": `Copy: ${command}`, onclick: () => copy(command, code) }, "Copy"),
      ),
    );
  }
  if (isRdp(grant)) {
    const user = grant.connect && grant.connect.username;
    return h(
      "div",
      { class: "connect" },
      h("button", { type: "button", class: "primary", onclick: () => downloadRdp(grant) }, `Download ${rdpFileName(grant)}`),
      h("span", { class: "dim" }, ` Remote Desktop to ${host}:${grant.port}${user ? ` as ${user}` : ""}`),
    );
  }
  return h("p", {}, "Connect to ", h("strong", {}, `${host}:${grant.port}`), ".");
}

function grantActions(grant, error) {
  if (grant.status === "awaiting_approval") {
    return h(
      "div",
      { class: "actions" },
      h("button", { type: "button", onclick: (e) => withdraw(grant, e.currentTarget, error) }, "Withdraw request"),
    );
  }
  const vm = state.vms.find((v) => v.id.toLowerCase() === grant.vm_id.toLowerCase());
  const most = vm ? durationSeconds(vm.max_duration) : null;
  const choices = DURATIONS.filter(([, s]) => most === null || s <= most);
  const preferred = choices.some(([value]) => value === "1h") ? "1h" : (choices.at(-1) || [])[0];
  const extendBy = h(
    "select",
    { name: "extend" },
    choices.map(([value, s]) => h("option", { value, selected: value === preferred }, spoken(s))),
  );
  return h(
    "div",
    { class: "actions" },
    grant.status === "active"
      ? h(
          "label",
          { class: "inline" },
          "Keep open for",
          extendBy,
        )
      : null,
    grant.status === "active"
      ? h("button", { type: "button", onclick: (e) => extend(grant, extendBy.value, e.currentTarget, error) }, "Extend")
      : null,
    h("button", { type: "button", class: "danger", onclick: (e) => revoke(grant, e.currentTarget, error) }, "Revoke"),
  );
}

async function extend(grant, duration, button, error) {
  await acting(button, error, async () => {
    const answer = await state.api.post(`/api/v1/grants/${encodeURIComponent(grant.id)}/extend`, { duration });
    say(`${grant.vm} port ${grant.port} now closes at ${clock(answer.body.expires_at)}.`);
    await loadGrants();
    focusGrant(grant.id);
  });
}

async function revoke(grant, button, error, { mine = true } = {}) {
  await acting(button, error, async () => {
    const answer = await state.api.call("DELETE", `/api/v1/grants/${encodeURIComponent(grant.id)}`);
    const warned = answer.body.warnings.filter((w) => !grant.warnings.includes(w));
    const whose = mine ? "" : ` (${grant.principal_name})`;
    say(`Door closed: ${grant.vm} port ${grant.port}${whose}.${warned.length ? ` Note: ${warned.join(" ")}` : ""}`);
    await Promise.all([loadGrants(), quietly(loadEveryone)]);
    byId(mine ? "grants-title" : "everyone-title").focus();
  });
}

async function withdraw(grant, button, error) {
  await acting(button, error, async () => {
    await state.api.post(`/api/v1/grants/${encodeURIComponent(grant.id)}/withdraw`);
    say(`Request for ${grant.vm} port ${grant.port} withdrawn.`);
    await loadGrants();
    byId("grants-title").focus();
  });
}

function closedLine(grant) {
  const reason = grant.reason || (grant.approval && grant.approval.reason);
  return h(
    "li",
    { dataset: { grant: grant.id } },
    h("strong", {}, `${grant.vm} · ${portLabel(grant.port)}`),
    ` ${(STATUS_WORDS[grant.status] || grant.status).toLowerCase()} · ${stamp(grant.updated_at)}`,
    reason ? h("span", { class: "dim" }, ` · ${reason}`) : null,
  );
}

function focusGrant(id) {
  const card = document.querySelector(`#grant-list [data-grant="${CSS.escape(id)}"]`);
  if (card) card.focus();
}

// ---------------------------------------------------------------- approvals

async function loadWaiting() {
  try {
    state.waiting = await state.api.all("/api/v1/grants?awaiting=me", "grants");
    remember(state.waiting);
  } catch (error) {
    if (!isApprover()) return; // not an approver: nothing to show
    throw error;
  }
  const visible = isApprover() || state.waiting.length > 0;
  show(byId("approvals"), visible);
  navFor("approvals", visible);
  if (!changed("waiting", state.waiting)) return;
  byId("approval-list").replaceChildren(
    ...(state.waiting.length
      ? state.waiting.map(approvalCard)
      : [h("p", { class: "empty" }, "Nothing waits for you.")]),
  );
}

function approvalCard(grant) {
  const title = uid("ask");
  const reasonId = uid("reason");
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const reason = h("input", {
    id: reasonId,
    name: "reason",
    maxlength: 500,
    autocomplete: "off",
    oninput: () => show(error, false),
  });
  const approval = grant.approval || {};
  const asked = durationSeconds(approval.requested_duration);
  return h(
    "article",
    { class: "card ask", "aria-labelledby": title, dataset: { grant: grant.id } },
    h("h3", { id: title }, `${grant.vm} · ${portLabel(grant.port)}`),
    h(
      "p",
      {},
      h("strong", {}, grant.principal_name || grant.principal),
      ` asks for ${asked ? spoken(asked) : "the usual time"}, from ${grant.source}.`,
    ),
    grant.justification ? h("p", {}, "Justification: ", h("q", {}, grant.justification)) : null,
    h(
      "p",
      { class: "dim" },
      `Asked at ${clock(grant.created_at)}`,
      approval.wait_until ? ` · waits until ${clock(approval.wait_until)}` : "",
    ),
    h("label", { for: reasonId, class: "wide" }, "Reason (required to deny; the requester reads it)"),
    reason,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: (e) => decide(grant, "approve", reason.value, e.currentTarget, error) }, "Approve"),
      h("button", { type: "button", class: "danger", onclick: (e) => decide(grant, "deny", reason.value, e.currentTarget, error) }, "Deny"),
    ),
    error,
  );
}

async function decide(grant, verdict, reason, button, error) {
  if (verdict === "deny" && !reason.trim()) {
    error.textContent = "Say why you deny it: the requester reads your reason.";
    show(error, true);
    return;
  }
  await acting(button, error, async () => {
    const body = reason.trim() ? { reason: reason.trim() } : {};
    await state.api.post(`/api/v1/grants/${encodeURIComponent(grant.id)}/${verdict}`, body);
    const who = grant.principal_name || grant.principal;
    say(`${verdict === "approve" ? "Approved" : "Denied"}: ${who}'s request for ${grant.vm} port ${grant.port}.`);
    await Promise.all([loadWaiting(), quietly(loadEveryone)]);
    byId("approvals-title").focus();
  });
}

// ---------------------------------------------------------------- admins: everyone's doors

async function loadEveryone() {
  if (!isAdmin()) return;
  show(byId("everyone"), true);
  navFor("admin", true);
  const all = await state.api.all("/api/v1/grants?all=true", "grants");
  remember(all);
  state.everyone = all.filter((g) => OPEN.has(g.status));
  if (!changed("everyone", state.everyone)) return;
  const box = byId("everyone-list");
  if (!state.everyone.length) {
    box.replaceChildren(h("p", { class: "empty" }, "No door is open for anyone."));
    return;
  }
  box.replaceChildren(
    h(
      "table",
      { class: "grid" },
      h("caption", { class: "sr-only" }, "Every open door and request"),
      h("thead", {}, h("tr", {}, ...["Who", "VM", "Port", "From", "Status", "Closes", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ...state.everyone.map(everyoneRow)),
    ),
  );
}

function everyoneRow(grant) {
  const error = h("span", { class: "form-error", role: "alert", hidden: true });
  const closes =
    grant.status === "active"
      ? h("span", {}, h("span", { role: "timer", class: "count", dataset: { until: grant.expires_at } }, countdown(grant.expires_at)), ` (${clock(grant.expires_at)})`)
      : "–";
  return h(
    "tr",
    { dataset: { grant: grant.id } },
    cell("Who", grant.principal_name || grant.principal),
    cell("VM", grant.vm),
    cell("Port", String(grant.port)),
    cell("From", grant.source),
    cell("Status", STATUS_WORDS[grant.status] || grant.status),
    cell("Closes", closes),
    cell(
      "",
      grant.status === "awaiting_approval" ? null : h(
        "button",
        {
          type: "button",
          class: "danger",
          "aria-label": `Revoke ${grant.principal_name}'s access to ${grant.vm} port ${grant.port}`,
          onclick: (e) => revoke(grant, e.currentTarget, error, { mine: grant.principal === state.me.principal }),
        },
        "Revoke",
      ),
      error,
    ),
  );
}

function cell(label, ...content) {
  return h("td", { dataset: { label } }, ...content);
}

// ---------------------------------------------------------------- the audit trail

async function loadAudit(more) {
  const box = byId("audit-list");
  let path;
  if (more && state.auditNext) {
    path = state.auditNext;
  } else {
    const form = new FormData(byId("audit-form"));
    const query = new URLSearchParams({ limit: "50" });
    for (const name of ["since", "kind", "vm", "user"]) {
      const value = String(form.get(name) || "").trim();
      if (value) query.set(name, value);
    }
    path = `/api/v1/audit?${query}`;
  }
  const url = new URL(path, window.location.origin);
  if (url.origin !== window.location.origin) return;
  let page;
  try {
    page = await state.api.get(url.pathname + url.search);
  } catch (error) {
    box.replaceChildren(h("p", { class: "form-error", role: "alert" }, words(error)));
    show(byId("audit-more"), false);
    return;
  }
  state.auditNext = page.nextLink;
  box.dataset.query = url.search; // what the table shows (tests wait for it)
  show(byId("audit-more"), Boolean(page.nextLink));
  const rows = page.events.map(auditRow);
  let body = box.querySelector("tbody");
  if (!more || !body) {
    if (!page.events.length) {
      box.replaceChildren(h("p", { class: "empty" }, "No event in this range."));
      return;
    }
    body = h("tbody", {});
    box.replaceChildren(
      h(
        "table",
        { class: "grid audit" },
        h("caption", { class: "sr-only" }, "Audit events, newest first"),
        h("thead", {}, h("tr", {}, ...["When", "What", "Who", "VM", "Port", "Source", "Reason or detail"].map((t) => h("th", { scope: "col" }, t)))),
        body,
      ),
    );
  }
  body.append(...rows);
}

function personName(oid) {
  return oid === state.me.principal ? "you" : state.names.get(oid) || oid || "–";
}

function person(oid) {
  return h("span", { class: state.names.has(oid) ? "" : "id", title: oid || "" }, personName(oid));
}

function auditRow(event) {
  const vm = event.vm_id ? event.vm_id.split("/").pop() : "–";
  const who = event.actor ? [person(event.principal), " (by ", person(event.actor), ")"] : person(event.principal);
  return h(
    "tr",
    { class: `kind-${event.kind}` },
    cell("When", stamp(event.at)),
    cell("What", h("span", { class: `badge ${badgeClass(event.kind)}` }, event.kind.replace("_", " "))),
    cell("Who", who),
    cell("VM", vm),
    cell("Port", event.port ? String(event.port) : "–"),
    cell("Source", event.source || "–"),
    cell("Reason or detail", [event.reason, event.detail].filter(Boolean).join(" · ") || "–"),
  );
}

// ---------------------------------------------------------------- small things

function tick() {
  let ended = false;
  for (const el of document.querySelectorAll("[data-until]")) {
    el.textContent = countdown(el.dataset.until);
    if (secondsLeft(el.dataset.until) <= 0) ended = true;
  }
  if (ended && !tick.pending) {
    tick.pending = true;
    setTimeout(() => {
      tick.pending = false;
      refresh();
    }, 3000); // the sweeper closes it; read again shortly
  }
}

function warningList(warnings) {
  return h(
    "div",
    { class: "warnings", role: "note" },
    h("strong", {}, "Warning"),
    h("ul", {}, ...warnings.map((w) => h("li", {}, warningWords(w)))),
  );
}

/** The broker's warnings, with a plain lead-in saying what each means for the person. */
function warningWords(text) {
  if (text.includes("adds no protection")) return `This door is pointless: ${text}.`;
  if (text.includes("will not let traffic in")) return `A deny rule wins, so you will not get through: ${text}.`;
  if (text.includes("flushConnection")) return `Sessions outlive the door: ${text}.`;
  return text;
}

function portLabel(port) {
  return PORT_NAMES[port] ? `${PORT_NAMES[port]} (${port})` : `port ${port}`;
}

function badgeClass(status) {
  if (status === "active" || status === "granted") return "ok";
  if (status === "pending" || status === "awaiting_approval" || status === "requested") return "wait";
  if (status === "failed" || status === "denied") return "bad";
  return "off";
}

async function copy(text, code) {
  try {
    await navigator.clipboard.writeText(text);
    say("Copied the command.");
  } catch {
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    say("The command is selected: press Ctrl+C (or ⌘C) to copy it.");
  }
}

function downloadRdp(grant) {
  const url = URL.createObjectURL(new Blob([rdpFile(grant)], { type: "application/x-rdp" }));
  const link = h("a", { href: url, download: rdpFileName(grant), hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  say(`Saved ${rdpFileName(grant)}: open it with Remote Desktop.`);
}

async function acting(button, error, work) {
  show(error, false);
  button.disabled = true;
  try {
    await work();
  } catch (problem_) {
    error.textContent = words(problem_);
    show(error, true);
  } finally {
    button.disabled = false;
  }
}

/** Run something a button asked for, showing a failure in the page's alert area. */
async function act(work) {
  try {
    await work();
    clearProblem();
  } catch (error) {
    problem(words(error));
  }
}

async function quietly(work) {
  try {
    await work();
  } catch (error) {
    problem(words(error));
  }
}

function remember(grants) {
  for (const g of grants) if (g.principal && g.principal_name) state.names.set(g.principal, g.principal_name);
}

function changed(key, ...lists) {
  const signature = JSON.stringify(lists);
  if (state.shown[key] === signature) return false;
  state.shown[key] = signature;
  return true;
}

function words(error) {
  if (error instanceof ApiError) return error.words;
  return (error && error.message) || String(error);
}

function say(text) {
  byId("status").textContent = text;
}

function problem(text) {
  const box = byId("problem");
  box.textContent = text;
  show(box, true);
}

function clearProblem() {
  const box = byId("problem");
  box.textContent = "";
  show(box, false);
}
