// Times and durations as people read them.

/** Seconds from an ISO 8601 duration (PT1H30M, P1D) or the broker's short form (1h30m, 90m); null if neither. */
export function durationSeconds(text) {
  if (!text) return null;
  const iso = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$/.exec(text);
  if (iso && text !== "P" && !text.endsWith("T")) {
    const [, d, hh, m, s] = iso.map((v) => Number(v || 0));
    return d * 86400 + hh * 3600 + m * 60 + s;
  }
  const short = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text);
  if (short && text) {
    const [, d, hh, m, s] = short.map((v) => Number(v || 0));
    return d * 86400 + hh * 3600 + m * 60 + s;
  }
  return null;
}

/** "1 h 30 min", "45 min", "2 days" */
export function spoken(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const parts = [];
  if (days) parts.push(`${days} ${days === 1 ? "day" : "days"}`);
  if (hours) parts.push(`${hours} h`);
  if (minutes) parts.push(`${minutes} min`);
  if (!parts.length) parts.push(`${seconds % 60} s`);
  return parts.join(" ");
}

/** A countdown: "59:07", "1:02:03"; "0:00" once past. */
export function countdown(untilIso, now = Date.now()) {
  const left = Math.max(0, Math.floor((Date.parse(untilIso) - now) / 1000));
  const h = Math.floor(left / 3600);
  const m = Math.floor((left % 3600) / 60);
  const s = left % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return `${h ? `${h}:` : ""}${mm}:${String(s).padStart(2, "0")}`;
}

export function secondsLeft(untilIso, now = Date.now()) {
  return Math.floor((Date.parse(untilIso) - now) / 1000);
}

/** Local wall-clock time, with the date when it is not today. */
export function clock(iso) {
  const when = new Date(iso);
  const today = new Date();
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (when.toDateString() === today.toDateString()) return time;
  return `${when.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

export function stamp(iso) {
  return new Date(iso).toLocaleString([], {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

// What the duration pickers offer, as the broker spells them; a VM's maximum cuts the list.
export const DURATIONS = [
  ["15m", 900], ["30m", 1800], ["1h", 3600], ["2h", 7200], ["4h", 14400], ["8h", 28800],
];
