// A tiny DOM builder: text goes in as text nodes only (never HTML), so nothing the API returns can run.

/**
 * h("button", {type: "button", onclick: fn, class: "x", dataset: {id: 1}}, "text", child, [more])
 * Attributes whose value is false, null or undefined are left out; `true` sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "value" || name === "checked" || name === "selected") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el;
}

export function show(el, visible) {
  el.hidden = !visible;
}

let unique = 0;
/** A fresh id for pairing labels and descriptions with controls. */
export function uid(prefix) {
  unique += 1;
  return `${prefix}-${unique}`;
}
