// The task-based UI: every button is a command the domain may accept or refuse; screens show
// facts. Plain ES module, no build step, nothing fetched but this origin's /api and /session.

const FINAL = new Set(["REJECTED", "CANCELLED", "DELIVERED"]);
const CANCELLABLE = new Set(["PENDING", "CONFIRMED"]);
const STATUSES = ["PENDING", "CONFIRMED", "SHIPPED", "DELIVERED", "REJECTED", "CANCELLED"];
const PAGE_SIZE = 10;
const main = document.getElementById("main");
let leave = new AbortController(); // aborted when the page changes: closes streams, stops loops

// ------------------------------------------------------------------ small helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const money = (cents, currency) =>
  cents === null || cents === undefined ? "—" : `${(cents / 100).toFixed(2)} ${currency || ""}`.trim();
const badge = (s) => (s ? h("span", { class: `badge s-${s}` }, s) : h("span", { class: "muted" }, "—"));
const short = (id) => (id ? String(id).slice(0, 8) : "");
const when = (t) => (t ? new Date(t).toLocaleString() : "—");
const session = () => JSON.parse(sessionStorage.getItem("session") || "null");
const notice = (text) => { document.getElementById("notice").textContent = text; };
const alertBox = (err) => h("div", { class: "alert", role: "alert" }, describe(err));

function describe(err) {
  if (!err) return "Something went wrong.";
  const b = err.body || {};
  const field = b.field ? ` (field: ${b.field})` : "";
  if (err.status === 401) return `Not signed in (${b.code || 401}): ${b.message || ""} Sign out and sign in again.`;
  return `Refused (${err.status}${b.code ? ` ${b.code}` : ""}): ${b.message || err.message || "no reason given"}${field}`;
}

function authHeaders() {
  const s = session();
  return s && s.token ? { Authorization: `Bearer ${s.token}` } : {};
}

// One call to a service through the UI server's proxy: {ok, status, body}.
async function api(service, path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...authHeaders(), ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(`/api/${service}${path}`, init);
  } catch (e) {
    return { ok: false, status: 0, body: { code: "network_error", message: String(e) } };
  }
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  return { ok: res.ok, status: res.status, body: data };
}

// Server-Sent Events over fetch (so the bearer token can go in a header). A lost connection
// resumes after the last event seen with Last-Event-ID after the server's `retry:` delay.
async function streamFacts(url, { onFact, onState, signal }) {
  let lastId = null;
  let retryMs = 2000;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream", ...authHeaders() };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const res = await fetch(url, { headers, signal });
      if (res.status >= 400 && res.status < 500) { // refused: retrying would not change it
        let body = null;
        try { body = await res.json(); } catch { body = null; }
        onState("refused", { status: res.status, body });
        return;
      }
      if (res.ok) {
        onState("live", { lastId });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let id = null;
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) continue;
              const [field, ...rest] = line.split(":");
              const v = rest.join(":").replace(/^ /, "");
              if (field === "id") id = v;
              else if (field === "data") data.push(v);
              else if (field === "retry" && /^\d+$/.test(v)) retryMs = Number(v);
            }
            if (id !== null) lastId = id;
            if (data.length) onFact(JSON.parse(data.join("\n")), id);
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    if (signal.aborted) return;
    onState("reconnecting", { lastId });
    await new Promise((resolve) => {
      const t = setTimeout(resolve, retryMs);
      signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }
}

// ------------------------------------------------------------------ shell and routing

const ROUTES = [
  [/^#?\/?$/, () => (session() ? go(home()) : renderSignIn())],
  [/^#\/signin$/, () => renderSignIn()],
  [/^#\/orders$/, () => renderOrders()],
  [/^#\/new$/, () => renderPlace()],
  [/^#\/orders\/([^/]+)$/, (m) => renderOrder(decodeURIComponent(m[1]))],
  [/^#\/warehouse$/, () => renderWarehouse()],
  [/^#\/ops$/, () => renderOps()],
];
const NAV = {
  customer: [["#/orders", "My orders"], ["#/new", "Place an order"]],
  staff: [["#/orders", "All orders"], ["#/warehouse", "Warehouse"]],
  admin: [["#/orders", "All orders"], ["#/warehouse", "Warehouse"], ["#/ops", "Operations"]],
};
const home = () => (session()?.role === "admin" ? "#/ops" : session()?.role === "staff" ? "#/warehouse" : "#/orders");
function go(hash) { if (location.hash === hash) route(); else location.hash = hash; }

function shell() {
  const s = session();
  const nav = document.getElementById("nav");
  nav.replaceChildren(...(s ? NAV[s.role] : []).map(([href, label]) =>
    h("a", { href, "aria-current": location.hash === href ? "page" : null }, label)));
  const who = document.getElementById("who");
  who.replaceChildren();
  if (s) {
    who.append(
      h("span", {}, `Signed in as ${s.role}${s.customer_id ? ` ${s.customer_id}` : ""}`),
      h("button", { class: "secondary", type: "button", onclick: () => { sessionStorage.removeItem("session"); go("#/signin"); } }, "Sign out"),
    );
  }
}

function page(title, ...children) {
  main.replaceChildren(h("h1", {}, title), ...children);
  document.title = `${title} · events-first`;
}

function route() {
  leave.abort();
  leave = new AbortController();
  notice("");
  shell();
  const hash = location.hash || "#/";
  if (!session() && hash !== "#/signin" && hash !== "#/") { go("#/signin"); return; }
  for (const [re, render] of ROUTES) {
    const m = hash.match(re);
    if (m) { render(m); return; }
  }
  page("Not found", h("p", {}, "No such page. "), h("a", { href: home() }, "Go home"));
}
window.addEventListener("hashchange", () => { route(); main.focus(); });

// ------------------------------------------------------------------ sign in

async function renderSignIn() {
  const err = h("div");
  const customer = h("input", { id: "customer-id", name: "customer_id", value: "demo-ada", list: "demo-customers", autocomplete: "off", "aria-describedby": "customer-hint" });
  const demo = h("datalist", { id: "demo-customers" });
  const roleRadio = (value, label, hint) => h("div", { class: "field" },
    h("input", { type: "radio", name: "role", id: `role-${value}`, value, checked: value === "customer", style: "width:auto;min-height:0" }),
    " ", h("label", { for: `role-${value}`, style: "display:inline" }, label), h("p", { class: "hint" }, hint));
  const form = h("form", { "aria-label": "Sign in", onsubmit: async (e) => {
    e.preventDefault();
    const role = form.querySelector("input[name=role]:checked").value;
    const res = await fetch("/session", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ role, customer_id: role === "customer" ? customer.value.trim() || null : null }) });
    const body = await res.json();
    if (!res.ok) { err.replaceChildren(alertBox({ status: res.status, body })); return; }
    sessionStorage.setItem("session", JSON.stringify(body));
    go(home());
  } },
    h("fieldset", {}, h("legend", {}, "Sign in as"),
      roleRadio("customer", "Demo customer", "Places and follows their own orders."),
      h("div", { class: "field" }, h("label", { for: "customer-id" }, "Customer id"), customer, demo,
        h("p", { class: "hint", id: "customer-hint" }, "Any id works; each id is its own customer.")),
      roleRadio("staff", "Warehouse staff", "Dispatches and delivers shipments; reads every order."),
      roleRadio("admin", "Administrator", "Everything staff may do, plus operations: lag, dead letters and their replay, rebuild.")),
    err,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")));
  page("Sign in",
    h("p", { class: "dev", role: "note" }, "For development only: this page hands out a signed token for any role to anyone who can reach it. A real deployment signs people in with its identity provider."),
    form);
  shell();
  fetch("/session/demo-customers").then((r) => r.json()).then((ids) => demo.replaceChildren(...ids.map((v) => h("option", { value: v })))).catch(() => {});
}

// ------------------------------------------------------------------ my orders

async function renderOrders(cursorStack = [], status = "") {
  const s = session();
  const isCustomer = s.role === "customer";
  const filter = h("select", { id: "status-filter", name: "status" },
    h("option", { value: "" }, "All"), ...STATUSES.map((st) => h("option", { value: st, selected: st === status }, st)));
  filter.addEventListener("change", () => renderOrders([], filter.value));
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  page(isCustomer ? "My orders" : "All orders",
    h("div", { class: "actions" },
      h("div", { class: "field" }, h("label", { for: "status-filter" }, "Filter by status"), filter),
      isCustomer ? h("a", { class: "button", href: "#/new" }, "Place an order") : null),
    body);
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (isCustomer) q.set("customer_id", s.customer_id);
  if (status) q.set("status", status);
  const cursor = cursorStack[cursorStack.length - 1];
  if (cursor) q.set("cursor", cursor);
  const res = await api("query", `/orders?${q}`);
  if (!res.ok) { body.replaceChildren(alertBox(res)); return; }
  const rows = res.body.items.map((o) => h("tr", {},
    h("td", {}, h("a", { href: `#/orders/${encodeURIComponent(o.order_id)}`, "aria-label": `Order ${o.order_id}` }, h("span", { class: "mono" }, short(o.order_id)))),
    isCustomer ? null : h("td", {}, o.customer_id || "—"),
    h("td", {}, badge(o.status)),
    h("td", {}, money(o.total_cents, o.currency)),
    h("td", {}, when(o.updated_at))));
  body.replaceChildren(
    rows.length
      ? h("div", { class: "scroll" }, h("table", {}, h("caption", { class: "muted", style: "text-align:left" }, `Page ${cursorStack.length + 1}`),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Order"), isCustomer ? null : h("th", { scope: "col" }, "Customer"),
          h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Total"), h("th", { scope: "col" }, "Updated"))),
        h("tbody", {}, rows)))
      : h("p", {}, "No orders yet."),
    h("div", { class: "actions" },
      cursorStack.length ? h("button", { type: "button", class: "secondary", onclick: () => renderOrders(cursorStack.slice(0, -1), status) }, "Previous page") : null,
      res.body.next_cursor ? h("button", { type: "button", class: "secondary", onclick: () => renderOrders([...cursorStack, res.body.next_cursor], status) }, "Next page") : null));
}

// ------------------------------------------------------------------ place an order

function renderPlace() {
  const s = session();
  const idempotencyKey = crypto.randomUUID(); // one per form: a retried submit cannot order twice
  const err = h("div");
  const items = h("div");
  let n = 0;
  const input = (id, label, attrs = {}) => h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, name: id, required: true, ...attrs }));
  const addItem = (sku = "", qty = 1, price = "15.00") => {
    n += 1;
    const i = n;
    const row = h("div", { class: "row item", "data-item": "" },
      input(`sku-${i}`, `Item ${i} SKU`, { value: sku || `SKU-${i}` }),
      input(`qty-${i}`, `Item ${i} quantity`, { type: "number", min: 1, max: 1000, value: qty }),
      input(`price-${i}`, `Item ${i} unit price`, { type: "number", min: 0, step: "0.01", value: price }),
      h("button", { type: "button", class: "secondary", onclick: () => { if (items.children.length > 1) row.remove(); } }, `Remove item ${i}`));
    items.append(row);
  };
  addItem("SKU-1", 2, "15.00");
  const select = (id, label, options, hint) => h("div", { class: "field" }, h("label", { for: id }, label),
    h("select", { id, name: id, "aria-describedby": hint ? `${id}-hint` : null }, ...options.map(([v, t]) => h("option", { value: v }, t))),
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
  // novalidate: the order service decides what is valid, and its refusal names the field.
  const form = h("form", { novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    const val = (id) => form.querySelector(`#${id}`).value.trim();
    const lines = [...items.querySelectorAll("[data-item]")].map((row) => {
      const [sku, qty, price] = row.querySelectorAll("input");
      return { sku: sku.value.trim(), quantity: Number(qty.value), unit_price_cents: Math.round(Number(price.value) * 100) };
    });
    const order = {
      customer_id: s.customer_id, currency: val("currency"), payment_token: val("card"), items: lines,
      shipping_address: { name: val("name"), line1: val("line1"), city: val("city"), postal_code: val("postal"), country: val("country") },
    };
    submit.disabled = true;
    const res = await api("order", "/orders", { method: "POST", body: order, headers: { "Idempotency-Key": idempotencyKey } });
    submit.disabled = false;
    if (!res.ok) {
      err.replaceChildren(alertBox(res));
      const m = /^items\.(\d+)\.(sku|quantity|unit_price_cents)$/.exec(res.body?.field || "");
      const rows = items.querySelectorAll("[data-item]");
      const bad = m && rows[Number(m[1])] ? rows[Number(m[1])].querySelectorAll("input")[["sku", "quantity", "unit_price_cents"].indexOf(m[2])] : null;
      if (bad) { bad.setAttribute("aria-invalid", "true"); bad.focus(); }
      return;
    }
    sessionStorage.setItem(`placed:${res.body.order_id}`, String(res.body.version));
    go(`#/orders/${encodeURIComponent(res.body.order_id)}`);
  } },
    h("fieldset", {}, h("legend", {}, "Basket"), items,
      h("button", { type: "button", class: "secondary", onclick: () => addItem() }, "Add item"),
      select("currency", "Currency", [["EUR", "EUR"], ["USD", "USD"], ["GBP", "GBP"]])),
    h("fieldset", {}, h("legend", {}, "Payment"),
      select("card", "Card", [["tok_visa", "Visa ending 4242 (accepted)"], ["tok_decline", "Card that is declined (tok_decline)"]],
        "Outcome driver: the declined card makes the payment service refuse, so the order is REJECTED.")),
    h("fieldset", {}, h("legend", {}, "Shipping address"),
      input("name", "Name", { value: "Ada Lovelace", autocomplete: "name" }),
      input("line1", "Address line", { value: "12 St James's Square", autocomplete: "address-line1" }),
      h("div", { class: "row two" }, input("city", "City", { value: "London", autocomplete: "address-level2" }), input("postal", "Postal code", { value: "SW1Y 4JH", autocomplete: "postal-code" })),
      select("country", "Country", [["GB", "United Kingdom"], ["FR", "France"], ["DE", "Germany"], ["US", "United States"], ["AQ", "Antarctica (not served)"]],
        "Outcome driver: Antarctica is not served, so the shipment fails, the payment is voided and the order CANCELLED.")),
    err);
  const submit = h("button", { type: "submit" }, "Place order");
  form.append(h("div", { class: "actions" }, submit));
  page("Place an order", form);
}

// ------------------------------------------------------------------ an order

function renderOrder(orderId) {
  const signal = leave.signal;
  const statusBox = h("div", {}, h("p", { class: "pending" }, "Pending: waiting for the first facts of this order…"));
  const actions = h("div", { class: "actions" });
  const refusal = h("div");
  const sagaBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const streamState = h("p", { class: "muted", id: "stream-state" }, "connecting…");
  const timeline = h("ol", { class: "timeline", "aria-label": "Facts of this order, live" });
  const travelBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const denied = h("div");
  page(`Order ${short(orderId)}`,
    denied,
    h("p", { class: "mono muted" }, orderId),
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "h-status" }, h("h2", { id: "h-status" }, "Status"), statusBox, actions, refusal),
      h("section", { class: "card", "aria-labelledby": "h-saga" }, h("h2", { id: "h-saga" }, "Saga steps"), sagaBox),
      h("section", { class: "card wide", "aria-labelledby": "h-live" }, h("h2", { id: "h-live" }, "Live timeline"), streamState, timeline),
      h("section", { class: "card wide", "aria-labelledby": "h-travel" }, h("h2", { id: "h-travel" }, "Time travel"), travelBox)));

  const seen = new Map(); // fact id -> fact
  let view = null;
  let refreshing = null;
  let again = false;
  const travel = { version: null, latest: 0, follow: true }; // follow: showing the newest version

  const showStatus = (o) => {
    view = o;
    const pendingNote = o.status === "PENDING" ? h("p", { class: "pending" }, "Pending: the saga is running; this page updates as its facts arrive.") : null;
    statusBox.replaceChildren(...[pendingNote].filter(Boolean), h("dl", { class: "facts", "aria-label": "Order status" },
      h("dt", {}, "Status"), h("dd", { "data-testid": "order-status" }, badge(o.status)),
      o.reason ? h("dt", {}, "Reason") : null, o.reason ? h("dd", { "data-testid": "order-reason" }, o.reason) : null,
      h("dt", {}, "Total"), h("dd", {}, money(o.total_cents, o.currency)),
      h("dt", {}, "Items"), h("dd", {}, (o.items || []).map((i) => `${i.quantity} × ${i.sku} @ ${money(i.unit_price_cents, o.currency)}`).join(", ") || "—"),
      h("dt", {}, "Payment"), h("dd", { "data-testid": "payment-status" }, badge(o.payment_status)),
      h("dt", {}, "Shipment"), h("dd", { "data-testid": "shipment-status" }, badge(o.shipment_status)),
      h("dt", {}, "Version"), h("dd", {}, String(o.version))));
    // The offer changes only when the status moves it: a refresh that changes nothing keeps the
    // same button (and a keyboard user's focus on it).
    const offer = CANCELLABLE.has(o.status) ? "cancel" : FINAL.has(o.status) ? "final" : "shipped";
    if (actions.dataset.offer === offer) return;
    actions.dataset.offer = offer;
    actions.replaceChildren(offer === "cancel"
      ? h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel order")
      : h("p", { class: "muted" }, offer === "final" ? "Final: no command applies any more." : "Cancel is no longer offered: the order has shipped."));
  };

  const showSaga = (sg) => {
    if (!sg.ok) { sagaBox.replaceChildren(sg.status === 404 ? h("p", { class: "pending" }, "Not started yet.") : alertBox(sg)); return; }
    const s = sg.body;
    sagaBox.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "Step"), h("dd", { "data-testid": "saga-step" }, s.step),
      h("dt", {}, "Mode"), h("dd", {}, s.mode === "COMPENSATE" ? `compensating → ${s.outcome || "…"}` : "fulfilling"),
      h("dt", {}, "Awaiting"), h("dd", {}, s.awaiting.length ? s.awaiting.join(", ") : "nothing"),
      h("dt", {}, "Done"), h("dd", {}, s.completed ? "yes" : "no")),
      h("ol", { class: "steps", "aria-label": "Saga steps so far" }, s.history.map((step) => h("li", {}, step))));
  };

  const refresh = async () => {
    if (refreshing) { again = true; return refreshing; }
    refreshing = (async () => {
      do {
        again = false;
        const [o, sg] = await Promise.all([api("query", `/orders/${encodeURIComponent(orderId)}`), api("order", `/sagas/${encodeURIComponent(orderId)}`)]);
        if (signal.aborted) return;
        if (o.ok) showStatus(o.body);
        else if (o.status !== 404) denied.replaceChildren(alertBox(o));
        showSaga(sg);
        if (o.ok && o.body.version > travel.latest) {
          travel.latest = o.body.version;
          if (travel.follow) await showVersion(o.body.version); // at the newest version: stay there
          else drawTravel();
        }
      } while (again && !signal.aborted);
    })();
    await refreshing;
    refreshing = null;
  };

  async function cancel() {
    refusal.replaceChildren();
    const version = view ? view.version : 0;
    const res = await api("order", `/orders/${encodeURIComponent(orderId)}/cancel`, { method: "POST" });
    if (!res.ok) { refusal.replaceChildren(alertBox(res)); return; }
    notice(`Cancellation accepted (saga step: ${res.body.saga_step}); waiting for the facts…`);
    // Wait for the fact, never for a time: the view past the version we saw, or the SSE feed.
    const next = await api("query", `/orders/${encodeURIComponent(orderId)}?min_version=${version + 1}&wait_s=10`);
    if (next.ok) showStatus(next.body);
  }

  // Time travel: the write side's state as it was after each of its versions.
  let shown = null;
  const drawTravel = () => {
    if (!shown) return;
    const v = travel.version;
    const step = (to) => { travel.follow = to >= travel.latest; showVersion(to); };
    const earlier = h("button", { type: "button", class: "secondary", disabled: v <= 1, onclick: () => step(v - 1) }, "Earlier version");
    const later = h("button", { type: "button", class: "secondary", disabled: v >= travel.latest, onclick: () => step(v + 1) }, "Later version");
    travelBox.replaceChildren(
      h("p", { "aria-live": "polite", "data-testid": "travel-version" }, `Version ${v} of ${travel.latest}`),
      h("dl", { class: "facts", "aria-label": `State after version ${v}` },
        h("dt", {}, "Status"), h("dd", { "data-testid": "travel-status" }, badge(shown.status)),
        shown.reason ? h("dt", {}, "Reason") : null, shown.reason ? h("dd", {}, shown.reason) : null,
        h("dt", {}, "Payment id"), h("dd", { class: "mono" }, shown.payment_id || "—"),
        h("dt", {}, "Shipment id"), h("dd", { class: "mono" }, shown.shipment_id || "—")),
      h("div", { class: "actions" }, earlier, later));
  };
  async function showVersion(v) {
    const res = await api("order", `/orders/${encodeURIComponent(orderId)}?as_of_version=${v}`);
    if (signal.aborted) return;
    if (!res.ok) { travelBox.replaceChildren(alertBox(res)); return; }
    travel.version = v;
    travel.latest = Math.max(travel.latest, res.body.version, v);
    shown = res.body;
    drawTravel();
    const focusTarget = travelBox.querySelector(`button:not([disabled])`);
    if (document.activeElement?.closest?.("section") === travelBox.parentElement) focusTarget?.focus();
  }

  const addFact = (f, id) => {
    if (seen.has(f.id)) return;
    seen.set(f.id, f);
    const cause = seen.get(f.causationid);
    const service = (f.source || "").split("/").filter(Boolean).pop() || f.source;
    timeline.append(h("li", { "data-type": f.type },
      h("div", {}, h("span", { class: "svc" }, service), " ", h("strong", {}, f.type), f.causalgap === "true" ? h("span", { class: "pending" }, " (cause not seen in time)") : null),
      h("div", { class: "meta" }, `${when(f.time)} · caused by ${cause ? cause.type : f.causationtype ? `${f.causationtype} ${short(f.causationid)}` : `request ${short(f.causationid)}`} · #${id}`)));
  };

  const refuse = (err) => {
    denied.replaceChildren(alertBox(err));
    for (const box of [statusBox, actions, sagaBox, travelBox]) box.replaceChildren();
    streamState.textContent = "not available";
  };
  // First wait (bounded, on the query service) until the views know the order, so that a
  // refusal means "not yours" (or "no such order"), not "not applied yet"; then go live.
  (async () => {
    for (;;) {
      const o = await api("query", `/orders/${encodeURIComponent(orderId)}?min_version=1&wait_s=5`);
      if (signal.aborted) return;
      if (o.ok) break;
      if (o.status !== 504) { refuse(o); return; }
      // 504 view_behind: not applied yet, or not this customer's (the service does not say
      // which). Show what a plain read answers now, and keep waiting for the fact.
      const now = await api("query", `/orders/${encodeURIComponent(orderId)}`);
      if (signal.aborted) return;
      if (!now.ok) { refuse(now); streamState.textContent = "waiting for the order's first fact…"; }
    }
    denied.replaceChildren();
    refresh();
    streamFacts(`/api/query/stream?order_id=${encodeURIComponent(orderId)}&last_event_id=0`, {
      signal,
      onFact: (f, id) => { addFact(f, id); refresh(); },
      onState: (state, info) => {
        if (state === "refused") refuse(info);
        else if (state === "live") streamState.textContent = info.lastId ? `live (resumed after fact #${info.lastId})` : "live";
        else streamState.textContent = `connection lost; resuming after fact #${info.lastId ?? 0}…`;
      },
    });
  })();
}

// ------------------------------------------------------------------ warehouse

async function renderWarehouse() {
  const err = h("div");
  const dispatchBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const deliverBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  page("Warehouse", err,
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "h-dispatch" }, h("h2", { id: "h-dispatch" }, "To dispatch"), dispatchBox),
      h("section", { class: "card", "aria-labelledby": "h-deliver" }, h("h2", { id: "h-deliver" }, "To deliver"), deliverBox)));
  const load = async (status, box, verb, label) => {
    const res = await api("query", `/orders?status=${status}&limit=50`);
    if (!res.ok) { box.replaceChildren(alertBox(res)); return; }
    const tasks = res.body.items.filter((o) => o.shipment_id);
    box.replaceChildren(tasks.length ? h("ul", { class: "tasks" }, tasks.map((o) => h("li", { class: "actions", style: "margin-bottom:.5rem" },
      h("a", { href: `#/orders/${encodeURIComponent(o.order_id)}` }, h("span", { class: "mono" }, short(o.order_id))),
      h("span", {}, `${o.customer_id} · ${money(o.total_cents, o.currency)}`),
      h("button", { type: "button", "aria-label": `${label} order ${o.order_id}`, onclick: async (e) => {
        e.target.disabled = true;
        const r = await api("shipping", `/shipments/${encodeURIComponent(o.shipment_id)}/${verb}`, { method: "POST" });
        if (!r.ok) { err.replaceChildren(alertBox(r)); e.target.disabled = false; return; }
        err.replaceChildren();
        notice(`${label}: accepted; waiting for the order to show it…`);
        await api("query", `/orders/${encodeURIComponent(o.order_id)}?min_version=${o.version + 1}&wait_s=10`);
        notice(`${label}: done for order ${short(o.order_id)}.`);
        reload();
      } }, label)))) : h("p", {}, "Nothing to do."));
  };
  const reload = () => Promise.all([load("CONFIRMED", dispatchBox, "dispatch", "Dispatch"), load("SHIPPED", deliverBox, "deliver", "Deliver")]);
  reload();
}

// ------------------------------------------------------------------ operations

function barChart(title, counts) {
  const entries = Object.entries(counts);
  const max = Math.max(1, ...entries.map(([, v]) => v));
  const rowH = 26, labelW = 110, w = 420;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${entries.length * rowH + 4}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${entries.map(([k, v]) => `${k} ${v}`).join(", ")}`);
  const el = (tag, attrs, text) => {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
  };
  entries.forEach(([k, v], i) => {
    const y = i * rowH + 2;
    el("text", { x: 0, y: y + 16 }, k);
    el("rect", { x: labelW, y, width: Math.max(1, ((w - labelW - 50) * v) / max), height: rowH - 8, fill: "#0a58ca", rx: 3 });
    el("text", { x: labelW + ((w - labelW - 50) * v) / max + 6, y: y + 16 }, String(v));
  });
  return svg;
}

async function renderOps() {
  const statsBox = h("div", {}, "Loading…");
  const lagBox = h("div", {}, "Loading…");
  const dlqBox = h("div", {}, "Loading…");
  const rebuildBox = h("div");
  const table = (head, rows) => h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
  const loadStats = async () => {
    const r = await api("query", "/stats");
    if (!r.ok) { statsBox.replaceChildren(alertBox(r)); return; }
    const s = r.body;
    statsBox.replaceChildren(
      h("p", {}, `${s.orders_total} orders (view generation ${s.generation})`),
      barChart("Orders by status", s.orders_by_status),
      h("h3", {}, "Revenue by currency"),
      Object.keys(s.revenue_by_currency).length
        ? table(["Currency", "Captured", "Refunded", "Revenue"], Object.entries(s.revenue_by_currency).map(([c, v]) =>
          [c, money(v.captured_cents, c), money(v.refunded_cents, c), money(v.revenue_cents, c)]))
        : h("p", {}, "No revenue yet."));
  };
  const loadLag = async () => {
    const r = await api("query", "/admin/consumers");
    if (!r.ok) { lagBox.replaceChildren(alertBox(r)); return; }
    lagBox.replaceChildren(h("p", { class: "hint" }, r.body.note),
      table(["Consumer group", "Lag", "Partitions"], r.body.groups.map((g) => [h("span", { class: "mono" }, g.group), String(g.lag), String(g.partitions.length)])));
  };
  const dlqOutcome = h("p", { "aria-live": "polite", "data-testid": "dlq-outcome" });
  // A command like any other: the query service may refuse it (shown), and on success the
  // original is back on its topic; the list is read again (a consumer may dead-letter it anew).
  const replay = async (d, button) => {
    button.disabled = true;
    const r = await api("query", "/admin/dlq/replay", { method: "POST", body: { topic: d.dlq, id: d.id } });
    if (!r.ok) { dlqOutcome.replaceChildren(alertBox(r)); button.disabled = false; return; }
    dlqOutcome.replaceChildren(`Replayed ${r.body.message_type} ${r.body.message_id} to ${r.body.topic} (partition ${r.body.partition}, offset ${r.body.offset}).`);
    await loadDlq();
  };
  const replayButton = (d) => {
    if (!d.id) return "—";
    const b = h("button", { type: "button", class: "secondary", "aria-label": `Replay dead letter ${d.id}` }, "Replay");
    b.onclick = () => replay(d, b);
    return b;
  };
  const loadDlq = async () => {
    const r = await api("query", "/admin/dlq");
    if (!r.ok) { dlqBox.replaceChildren(alertBox(r)); return; }
    dlqBox.replaceChildren(r.body.items.length
      ? table(["DLQ", "Offset", "Type", "Consumer", "Attempts", "Error", "Action"], r.body.items.map((d) =>
        [d.dlq, String(d.offset), d.type || "?", d.consumer || "?", String(d.attempts ?? "?"), d.error || "", replayButton(d)]))
      : h("p", {}, `No dead letters in ${r.body.topics.length} DLQ topics.`));
  };
  const startRebuild = async (e) => {
    e.target.disabled = true;
    const r = await api("query", "/admin/rebuild", { method: "POST" });
    if (!r.ok) { rebuildBox.replaceChildren(alertBox(r)); e.target.disabled = false; return; }
    const id = r.body.rebuild_id;
    const bar = h("progress", { max: 1, value: 0, "aria-label": "Rebuild progress" });
    const text = h("p", { "aria-live": "polite" }, "Started.");
    rebuildBox.replaceChildren(bar, text);
    const signal = leave.signal;
    // Progress is shown as the query service reports it (a display, not a wait for a result).
    for (;;) {
      const st = await api("query", `/admin/rebuild/${id}`);
      if (signal.aborted) return;
      if (!st.ok) { rebuildBox.append(alertBox(st)); break; }
      bar.value = st.body.progress;
      text.textContent = `Generation ${st.body.generation}: ${st.body.state}, ${st.body.applied_total} of ${st.body.target_total} offsets (${Math.round(st.body.progress * 100)}%)`;
      if (st.body.done) { text.textContent += " — switched."; loadStats(); break; }
      await new Promise((res) => setTimeout(res, 500));
    }
    e.target.disabled = false;
  };
  page("Operations",
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "h-stats" }, h("h2", { id: "h-stats" }, "Stats"), statsBox,
        h("button", { type: "button", class: "secondary", onclick: loadStats }, "Refresh stats")),
      h("section", { class: "card", "aria-labelledby": "h-rebuild" }, h("h2", { id: "h-rebuild" }, "Rebuild the views"),
        h("p", { class: "hint" }, "Replays every event topic from offset 0 into a fresh generation of views; the current one keeps serving until the switch."),
        h("button", { type: "button", onclick: startRebuild }, "Start rebuild"), rebuildBox),
      h("section", { class: "card wide", "aria-labelledby": "h-lag" }, h("h2", { id: "h-lag" }, "Consumer lag"), lagBox,
        h("button", { type: "button", class: "secondary", onclick: loadLag }, "Refresh lag")),
      h("section", { class: "card wide", "aria-labelledby": "h-dlq" }, h("h2", { id: "h-dlq" }, "Dead letters"), dlqOutcome, dlqBox,
        h("button", { type: "button", class: "secondary", onclick: loadDlq }, "Refresh dead letters"))));
  await Promise.all([loadStats(), loadLag(), loadDlq()]);
}

route();
