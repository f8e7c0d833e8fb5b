// The dashboard's building blocks: elements made from text (never from markup), number and
// time formats, and the one way to call the API (with the session's CSRF token on POSTs).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const rate = (n) => (n === null || n === undefined ? "–" :
  Number(n).toLocaleString("en-US", { maximumFractionDigits: n < 10 ? 1 : 0 }));

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const parts = [[Math.floor(seconds / 86400), "d"], [Math.floor(seconds / 3600) % 24, "h"],
                 [Math.floor(seconds / 60) % 60, "m"], [seconds % 60, "s"]];
  return parts.filter(([v]) => v).slice(0, 2).map(([v, u]) => `${v}${u}`).join(" ") || "0s";
}

const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB");

function showNotice(text, kind) {
  const box = document.getElementById("notice");
  box.textContent = text || "";
  box.className = text ? `notice ${kind || ""}` : "notice hidden";
}

async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: {}, credentials: "same-origin" };
  if (options.body !== undefined) {
    init.body = JSON.stringify(options.body);
    init.headers["Content-Type"] = "application/json";
  }
  if (init.method === "POST" && state.session && state.session.csrf) {
    init.headers["X-CSRF-Token"] = state.session.csrf;
  }
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (response.status === 401 && path !== "/api/login") loggedOut(body && body.error);
  return { ok: response.ok, status: response.status, body };
}

function refusalText(result) {
  const why = (result.body && result.body.error) || "the broker refused";
  return `Refused (HTTP ${result.status}): ${why}`;
}

