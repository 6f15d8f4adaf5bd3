/* RelayDesk playground: three chat panes driven by the bot's playground API.
 *
 * The page long-polls /playground/api/messages and renders every row into the
 * list of its conversation in each pane that shows it. Cards arrive as HTML
 * rendered (and escaped) by the server; a "card_update" replaces the earlier
 * card with the same track key in place. What people type goes to /send,
 * card button clicks to /click, always as the pane's current speaker.
 */
"use strict";

// Every label the page shows, in one place.
const LABELS = {
  brand: "RelayDesk 演示台",
  hint: "在客户窗口输入故障描述，例如 “3号线水泵漏水停机了”",
  connecting: "连接中…",
  online: "已连接",
  offline: "连接中断，正在重连…",
  send: "发送",
  photo: "照片",
  photoTitle: "发送照片（也可以直接粘贴图片）",
  speakingAs: "发言身份",
  placeholder: "输入消息，Enter 发送，Shift+Enter 换行",
  subUser: "与 RelayDesk 的单聊",
  subGroup: (n) => `${n} 位同事 + RelayDesk`,
  tabGroup: "群聊",
  tabDirect: (name) => `${name}的私聊`,
  emptyCustomer: "描述设备故障，RelayDesk 会建单、派工，并把每一步进展推送给你。试试：",
  emptyGroup: "新工单的卡片会推送到这个群，点卡片上的按钮即可认领、转交、推进进度。",
  emptyDirect: "RelayDesk 私下发给这位同事的卡片和提醒（例如认领后的处理指引）会出现在这里。",
  emptyLead: "超时未处理或被加急的工单会以升级卡片推送到这里。",
  suggestions: ["3号线水泵漏水停机了", "进度", "我的工单"],
  unread: (n) => `（${n}）`,
  cardUpdated: "↑ 卡片已更新，点击查看",
  failed: "失败：",
  networkError: "网络错误，请重试",
};

const API = "/playground/api";
const POLL_WAIT = 25;
const TIME_GAP_MS = 5 * 60 * 1000;

const state = {
  people: new Map(), // id -> {id, name, role, role_label}
  panes: [],
  subs: new Map(), // conversation -> panes that can show it
  lastId: 0,
  seen: new Set(),
  live: false, // false while the history loads: old messages are not "unread"
};

function $(sel, root = document) { return root.querySelector(sel); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function uuid() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  // Pages opened over plain http from another host have no randomUUID.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function nameOf(id) { return state.people.get(id)?.name || id; }

function initial(name) { return Array.from(name || "?")[0]; }

function hue(id) {
  let h = 0;
  for (const c of id || "") h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

function paint(node, id) { node.style.backgroundColor = `hsl(${hue(id)}, 52%, 54%)`; }

function avatar(id, name) {
  const a = el("div", "avatar");
  a.setAttribute("aria-hidden", "true");
  if (!id) {
    a.classList.add("avatar-bot");
    a.textContent = "RD";
  } else {
    a.textContent = initial(name);
    paint(a, id);
  }
  return a;
}

function hhmm(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return "";
  return d.toLocaleTimeString("zh-CN", { hour: "2-digit", minute: "2-digit", hour12: false });
}

function fragment(html) {
  const t = document.createElement("template");
  t.innerHTML = html; // rendered and escaped by the server (bot/channels/playground/render.py)
  return t.content;
}

async function postJSON(path, body) {
  let resp;
  try {
    resp = await fetch(API + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    return { ok: false, error: LABELS.networkError };
  }
  let data = {};
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) return { ok: false, error: data.error || `HTTP ${resp.status}` };
  return data;
}

/* ---------- panes ---------- */

class Pane {
  constructor(def) {
    this.def = def;
    this.key = def.key;
    this.isGroup = def.kind === "group";
    this.speaker = def.speakers[0];
    this.view = "group"; // group panes: "group" or "direct"
    this.lists = new Map(); // conversation -> list element
    this.unread = new Map(); // conversation -> count
    this.build();
    for (const conv of this.allConversations()) {
      if (!state.subs.has(conv)) state.subs.set(conv, []);
      state.subs.get(conv).push(this);
    }
    this.show();
  }

  allConversations() {
    if (this.isGroup) return [this.def.conversation, ...Object.values(this.def.direct || {})];
    return Object.values(this.def.conversations);
  }

  get conversation() {
    if (this.isGroup) return this.view === "group" ? this.def.conversation : this.def.direct[this.speaker];
    return this.def.conversations[this.speaker];
  }

  build() {
    const def = this.def;
    const section = el("section", `pane pane-${def.key}`);
    section.id = `pane-${def.key}`;
    section.dataset.pane = def.key;

    const head = el("header", "pane-header");
    this.icon = el("div", "pane-icon");
    const heading = el("div", "pane-heading");
    this.title = el("div", "pane-title", def.title);
    const sub = el("div", "pane-sub", this.isGroup ? LABELS.subGroup(def.speakers.length) : LABELS.subUser);
    heading.append(this.title, sub);

    const who = el("label", "speaker");
    who.append(el("span", "speaker-label", LABELS.speakingAs));
    this.select = el("select", "speaker-select");
    this.select.id = `speaker-${def.key}`;
    for (const id of def.speakers) {
      const opt = el("option", "", nameOf(id));
      opt.value = id;
      this.select.append(opt);
    }
    this.select.disabled = def.speakers.length < 2;
    this.select.addEventListener("change", () => { this.speaker = this.select.value; this.show(); });
    who.append(this.select);
    head.append(this.icon, heading, who);
    section.append(head);

    if (this.isGroup && this.def.direct) {
      const tabs = el("div", "pane-tabs");
      tabs.setAttribute("role", "tablist");
      this.tabs = {};
      for (const view of ["group", "direct"]) {
        const tab = el("button", "tab");
        tab.type = "button";
        tab.id = `tab-${def.key}-${view}`;
        tab.dataset.view = view;
        tab.setAttribute("role", "tab");
        tab.append(el("span", "tab-label"), el("span", "tab-badge"));
        tab.addEventListener("click", () => { this.view = view; this.show(); });
        tabs.append(tab);
        this.tabs[view] = tab;
      }
      section.append(tabs);
    }

    this.body = el("div", "pane-body");
    this.jump = el("button", "jump");
    this.jump.type = "button";
    this.jump.hidden = true;
    this.jump.addEventListener("click", () => {
      const card = this.jumpTarget;
      this.jump.hidden = true;
      if (!card || !card.isConnected) return;
      card.scrollIntoView({ behavior: "smooth", block: "center" });
      flash(card);
    });
    this.body.append(this.jump);
    this.toasts = el("div", "toasts");
    const form = el("form", "composer");
    // Pictures: a file picker behind the 照片 button, or pasted into the input.
    this.file = el("input", "composer-file");
    this.file.type = "file";
    this.file.accept = "image/jpeg,image/png,image/gif,image/webp";
    this.file.multiple = true;
    this.file.hidden = true;
    this.file.id = `file-${def.key}`;
    this.file.addEventListener("change", async () => {
      const files = Array.from(this.file.files || []);
      this.file.value = "";
      for (const f of files) await this.sendPhoto(f);
    });
    this.photoBtn = el("button", "composer-photo", LABELS.photo);
    this.photoBtn.type = "button";
    this.photoBtn.id = `photo-${def.key}`;
    this.photoBtn.title = LABELS.photoTitle;
    this.photoBtn.addEventListener("click", () => this.file.click());
    this.input = el("textarea", "composer-input");
    this.input.id = `input-${def.key}`;
    this.input.rows = 1;
    this.input.placeholder = LABELS.placeholder;
    this.sendBtn = el("button", "composer-send", LABELS.send);
    this.sendBtn.type = "submit";
    this.sendBtn.id = `send-${def.key}`;
    form.append(this.file, this.photoBtn, this.input, this.sendBtn);
    this.input.addEventListener("paste", async (e) => {
      const items = Array.from(e.clipboardData?.items || []).filter((i) => i.kind === "file" && i.type.startsWith("image/"));
      if (!items.length) return;
      e.preventDefault();
      for (const item of items) { const f = item.getAsFile(); if (f) await this.sendPhoto(f); }
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    this.input.addEventListener("input", () => autosize(this.input));
    form.addEventListener("submit", (e) => { e.preventDefault(); this.sendText(); });

    this.body.append(this.toasts);
    section.append(this.body, form);
    this.el = section;
  }

  list(conversation) {
    if (!this.lists.has(conversation)) {
      const list = el("div", "msg-list");
      list.dataset.conversation = conversation;
      list.append(this.emptyState(conversation));
      list.hidden = conversation !== this.conversation;
      this.lists.set(conversation, list);
      this.body.append(list);
    }
    return this.lists.get(conversation);
  }

  emptyState(conversation) {
    const box = el("div", "empty");
    let text = LABELS.emptyLead;
    if (this.key === "customer") text = LABELS.emptyCustomer;
    else if (this.isGroup) text = conversation === this.def.conversation ? LABELS.emptyGroup : LABELS.emptyDirect;
    box.append(el("p", "", text));
    if (this.key === "customer") {
      const chips = el("div", "chips");
      for (const s of LABELS.suggestions) {
        const chip = el("button", "chip", s);
        chip.type = "button";
        chip.addEventListener("click", () => { this.input.value = s; autosize(this.input); this.input.focus(); });
        chips.append(chip);
      }
      box.append(chips);
    }
    return box;
  }

  /* Show the current conversation as the current speaker. */
  show() {
    const conv = this.conversation;
    const current = this.list(conv);
    for (const [c, l] of this.lists) l.hidden = c !== conv;
    this.jump.hidden = true;
    this.el.dataset.conversation = conv;
    this.el.dataset.speaker = this.speaker;
    this.el.dataset.view = this.isGroup ? this.view : "direct";
    if (this.isGroup) {
      this.icon.textContent = this.view === "group" ? "群" : initial(nameOf(this.speaker));
      if (this.view === "group") this.icon.style.backgroundColor = "";
      else paint(this.icon, this.speaker);
    } else {
      this.title.textContent = this.def.titles[this.speaker];
      this.icon.textContent = initial(nameOf(this.speaker));
      paint(this.icon, this.speaker);
    }
    this.unread.delete(conv);
    for (const l of this.lists.values()) {
      for (const m of l.querySelectorAll(".msg[data-sender]")) {
        m.classList.toggle("mine", m.dataset.sender === this.speaker);
      }
    }
    this.refreshBadges();
    current.scrollTop = current.scrollHeight;
  }

  refreshBadges() {
    const count = (conv) => (conv === this.conversation ? 0 : this.unread.get(conv) || 0);
    let total = 0;
    for (const opt of this.select.options) {
      const conv = this.isGroup ? this.def.direct?.[opt.value] : this.def.conversations[opt.value];
      const n = conv ? count(conv) : 0;
      total += n;
      opt.textContent = nameOf(opt.value) + (n ? LABELS.unread(n) : "");
    }
    if (this.tabs) {
      const g = count(this.def.conversation);
      const d = count(this.def.direct[this.speaker]);
      total += g;
      this.tabs.group.querySelector(".tab-label").textContent = LABELS.tabGroup;
      this.tabs.direct.querySelector(".tab-label").textContent = LABELS.tabDirect(nameOf(this.speaker));
      this.tabs.group.querySelector(".tab-badge").textContent = g ? String(g) : "";
      this.tabs.direct.querySelector(".tab-badge").textContent = d ? String(d) : "";
      for (const [view, tab] of Object.entries(this.tabs)) {
        tab.classList.toggle("active", view === this.view);
        tab.setAttribute("aria-selected", String(view === this.view));
      }
    }
    this.el.classList.toggle("has-unread", total > 0);
  }

  render(m) {
    const list = this.list(m.conversation);
    const stick = nearBottom(list);
    if (m.kind === "card_update") {
      const fresh = replaceCard(list, m);
      if (fresh) {
        if (!list.hidden && !inView(fresh, list)) this.showJump(fresh);
        return;
      }
    }

    list.querySelector(".empty")?.remove();
    const at = Date.parse(m.at);
    const prev = Number(list.dataset.lastAt || 0);
    if (!prev || at - prev > TIME_GAP_MS) list.append(el("div", "msg-time", hhmm(m.at)));
    list.dataset.lastAt = String(at);

    const row = el("div", "msg" + (m.sender_id ? "" : " from-bot"));
    row.dataset.id = m.id;
    row.dataset.kind = m.kind;
    if (m.sender_id) row.dataset.sender = m.sender_id;
    if (m.sender_id && m.sender_id === this.speaker) row.classList.add("mine");
    row.title = hhmm(m.at);
    const main = el("div", "msg-main");
    main.append(el("div", "msg-name", m.sender_name), content(m));
    row.append(avatar(m.sender_id, m.sender_name), main);
    list.append(row);

    if (state.live && m.conversation !== this.conversation) {
      this.unread.set(m.conversation, (this.unread.get(m.conversation) || 0) + 1);
      this.refreshBadges();
    }
    if (stick || row.classList.contains("mine")) list.scrollTop = list.scrollHeight;
  }

  /* A card changed out of sight: offer to scroll to it. */
  showJump(card) {
    this.jumpTarget = card;
    this.jump.textContent = LABELS.cardUpdated;
    this.jump.hidden = false;
    clearTimeout(this.jumpTimer);
    this.jumpTimer = setTimeout(() => { this.jump.hidden = true; }, 8000);
  }

  reset() {
    for (const l of this.lists.values()) l.remove();
    this.lists.clear();
    this.unread.clear();
    this.show();
  }

  async sendText() {
    const text = this.input.value.trim();
    if (!text || this.sendBtn.disabled) return;
    this.sendBtn.disabled = true;
    const res = await postJSON("/send", {
      conversation: this.conversation, sender_id: this.speaker, text, client_id: uuid(),
    });
    this.sendBtn.disabled = false;
    if (res.ok) {
      if (this.input.value.trim() === text) { this.input.value = ""; autosize(this.input); }
    } else {
      this.toast(LABELS.failed + res.error, "error");
    }
    this.input.focus();
  }

  async sendPhoto(file) {
    const q = new URLSearchParams({ conversation: this.conversation, sender_id: this.speaker, client_id: uuid() });
    let res;
    try {
      const resp = await fetch(`${API}/photo?${q}`, { method: "POST", headers: { "Content-Type": file.type }, body: file });
      let data = {};
      try { data = await resp.json(); } catch (e) { /* not JSON */ }
      res = resp.ok ? data : { ok: false, error: data.error || `HTTP ${resp.status}` };
    } catch (e) {
      res = { ok: false, error: LABELS.networkError };
    }
    if (!res.ok) this.toast(LABELS.failed + res.error, "error");
  }

  toast(text, kind) {
    if (!text) return;
    const t = el("div", "toast" + (kind ? ` toast-${kind}` : ""), text);
    this.toasts.append(t);
    const life = kind === "error" ? 4000 : 2200;
    setTimeout(() => t.classList.add("toast-out"), life);
    setTimeout(() => t.remove(), life + 500);
  }
}

function autosize(input) {
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight, 120) + "px";
}

function nearBottom(list) {
  return list.hidden || list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function content(m) {
  const p = m.payload || {};
  if (m.kind === "card" || m.kind === "card_update") {
    const box = el("div", "msg-card");
    box.append(fragment(p.html || ""));
    return box;
  }
  if (m.kind === "image") {
    const box = el("div", "bubble bubble-image");
    const a = el("a");
    a.href = p.url; a.target = "_blank"; a.rel = "noopener";
    const img = el("img", "msg-image");
    img.src = p.url; img.alt = "";
    img.addEventListener("load", () => {
      const l = box.closest(".msg-list");
      if (l && nearBottom(l)) l.scrollTop = l.scrollHeight;
    });
    a.append(img);
    box.append(a);
    if (p.caption) { const c = el("div", "caption"); c.append(fragment(p.caption)); box.append(c); }
    return box;
  }
  const bubble = el("div", "bubble");
  bubble.append(fragment(p.html || ""));
  return bubble;
}

/* Replace the latest card with the same track key in place; the new element, or null. */
function replaceCard(list, m) {
  const key = m.payload && m.payload.track_key;
  if (!key) return null;
  const cards = list.querySelectorAll(`.rd-card[data-track-key="${CSS.escape(key)}"]`);
  const old = cards[cards.length - 1];
  const fresh = fragment(m.payload.html || "").firstElementChild;
  if (!old || !fresh) return null;
  old.replaceWith(fresh);
  flash(fresh);
  const row = fresh.closest(".msg");
  if (row) row.dataset.updatedId = m.id;
  return fresh;
}

function flash(card) {
  card.classList.remove("rd-updated");
  void card.offsetWidth; // restart the animation
  card.classList.add("rd-updated");
  card.addEventListener("animationend", () => card.classList.remove("rd-updated"), { once: true });
}

function inView(node, list) {
  const a = node.getBoundingClientRect();
  const b = list.getBoundingClientRect();
  return a.bottom > b.top + 24 && a.top < b.bottom - 24;
}

function render(m) {
  if (state.seen.has(m.id)) return;
  state.seen.add(m.id);
  for (const pane of state.subs.get(m.conversation) || []) pane.render(m);
}

/* ---------- card buttons ---------- */

async function clickButton(btn) {
  const pane = state.panes.find((p) => p.el === btn.closest(".pane"));
  const list = btn.closest(".msg-list");
  if (!pane || !list || btn.disabled) return;
  btn.disabled = true;
  btn.classList.add("pending");
  const res = await postJSON("/click", {
    conversation: list.dataset.conversation, sender_id: pane.speaker,
    token: btn.dataset.token, client_id: uuid(),
  });
  btn.disabled = false;
  btn.classList.remove("pending");
  if (res.ok) pane.toast(res.toast);
  else pane.toast(LABELS.failed + res.error, "error");
}

document.addEventListener("click", (e) => {
  const btn = e.target.closest && e.target.closest(".rd-btn[data-token]");
  if (btn) { e.preventDefault(); clickButton(btn); }
});

/* ---------- connection ---------- */

function setConn(s) {
  const c = $("#conn");
  c.dataset.state = s;
  $(".conn-label", c).textContent = LABELS[s];
}

async function poll() {
  let delay = 1000;
  let wait = 0; // the history at once, then wait for news
  for (;;) {
    try {
      const r = await fetch(`${API}/messages?after=${state.lastId}&wait=${wait}`, { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const data = await r.json();
      setConn("online");
      delay = 1000;
      if (data.last_id < state.lastId) {
        // The bot's database was reset: start over.
        state.seen.clear();
        state.lastId = 0;
        state.live = false;
        for (const pane of state.panes) pane.reset();
        continue;
      }
      for (const m of data.messages) render(m);
      state.lastId = Math.max(state.lastId, data.last_id);
      document.body.dataset.lastId = String(state.lastId);
      wait = data.more ? 0 : POLL_WAIT;
      if (!data.more && !state.live) {
        state.live = true;
        document.body.classList.add("live");
      }
    } catch (e) {
      setConn("offline");
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }
}

async function start() {
  for (const node of document.querySelectorAll("[data-label]")) node.textContent = LABELS[node.dataset.label];
  document.title = LABELS.brand;
  setConn("connecting");
  let data;
  for (let delay = 1000; ; delay = Math.min(delay * 2, 10000)) {
    try {
      const r = await fetch(`${API}/state`, { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      data = await r.json();
      break;
    } catch (e) {
      setConn("offline");
      await sleep(delay);
    }
  }
  setConn("online");
  for (const p of data.people) state.people.set(p.id, p);
  const root = $("#panes");
  for (const def of data.panes) {
    const pane = new Pane(def);
    state.panes.push(pane);
    root.append(pane.el);
  }
  document.body.classList.add("ready");
  state.panes[0]?.input.focus();
  poll();
}

document.addEventListener("DOMContentLoaded", start);
