// The broker's HTTP API (docs/api.md), called with the signed-in person's token on every request.
// Errors come back as ApiError carrying the API's own words: {"error": {"code", "message"}}.

import { spoken } from "./time.js";

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** The message to show a person: the API's message, with when to try again for a 429. */
  get words() {
    if (this.status === 429 && this.retryAfter) {
      return `${this.message} (you can ask again in ${spoken(Number(this.retryAfter))})`;
    }
    return this.message;
  }
}

const PAGE = 1000; // the most the broker hands out per page

export class Api {
  /** `token()` resolves to a bearer token for the broker's scope (see auth.js). */
  constructor(token) {
    this.token = token;
  }

  /** One request; resolves to {status, body, location, retryAfter} or throws ApiError. */
  async call(method, path, body) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${await this.token()}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const request = () =>
      fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
        redirect: "error",
      });
    let response;
    try {
      response = await request();
    } catch {
      // A read is tried once more (a network switch aborts what is in flight); a change is never sent twice.
      if (method !== "GET") throw unreachable();
      await new Promise((resolve) => setTimeout(resolve, 500));
      try {
        response = await request();
      } catch {
        throw unreachable();
      }
    }
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    const retryAfter = response.headers.get("Retry-After");
    if (!response.ok) {
      const error = (parsed && parsed.error) || {};
      const code = error.code || response.headers.get("x-ms-error-code") || `http_${response.status}`;
      const message = error.message || fallbackMessage(response.status);
      throw new ApiError(response.status, code, message, retryAfter);
    }
    return { status: response.status, body: parsed, location: response.headers.get("Location"), retryAfter };
  }

  get(path) {
    return this.call("GET", path).then((r) => r.body);
  }

  post(path, body = {}) {
    return this.call("POST", path, body);
  }

  /** Every item of a paged list: follows `nextLink` on the broker's own origin until it is null. */
  async all(path, key) {
    const items = [];
    const seen = new Set();
    let next = withLimit(path);
    while (next) {
      const url = new URL(next, window.location.origin);
      if (url.origin !== window.location.origin || seen.has(url.href)) {
        throw new ApiError(0, "bad_link", "The broker answered with a page link this page will not follow.");
      }
      seen.add(url.href);
      const page = await this.get(url.pathname + url.search);
      items.push(...(page[key] || []));
      next = page.nextLink;
    }
    return items;
  }
}

function unreachable() {
  return new ApiError(0, "unreachable", "The broker could not be reached. Check your connection and try again.");
}

function withLimit(path) {
  const url = new URL(path, window.location.origin);
  if (!url.searchParams.has("limit")) url.searchParams.set("limit", String(PAGE));
  return url.pathname + url.search;
}

function fallbackMessage(status) {
  if (status === 401) return "Your sign-in is no longer accepted. Sign in again.";
  if (status === 403) return "You are not allowed to do that.";
  if (status === 404) return "Not found: it may have been removed.";
  if (status >= 500) return `The broker failed to answer (HTTP ${status}). Try again in a moment.`;
  return `The broker refused the request (HTTP ${status}).`;
}
