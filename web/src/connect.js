// How to reach a VM through an open door: the ssh command, or an .rdp file for Remote Desktop.

/** The address to dial: the VM's DNS name or public address as the broker reports it. */
export function hostOf(grant) {
  const c = grant.connect || {};
  return c.host || c.fqdn || c.public_ip || null;
}

export function isRdp(grant) {
  return grant.protocol === "rdp" || grant.port === 3389;
}

export function isSsh(grant) {
  return grant.protocol === "ssh" || grant.port === 22;
}

/** `ssh user@host -p port`, exactly what to paste into a terminal; null without a public address. */
export function sshCommand(grant) {
  const host = hostOf(grant);
  if (!host) return null;
  const user = grant.connect && grant.connect.username;
  const target = user ? `${user}@${host}` : host;
  return `ssh ${target} -p ${grant.port}`;
}

/** The lines of an .rdp file for this grant (mstsc, Microsoft Remote Desktop, Remmina all read them). */
export function rdpFile(grant) {
  const host = hostOf(grant);
  if (!host) return null;
  const address = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  const lines = [
    `full address:s:${address}:${grant.port}`,
    "prompt for credentials:i:1",
    "administrative session:i:1",
    "authentication level:i:2",
    "screen mode id:i:2",
  ];
  const user = grant.connect && grant.connect.username;
  if (user) lines.push(`username:s:${user}`);
  return `${lines.join("\r\n")}\r\n`;
}

export function rdpFileName(grant) {
  return `${grant.vm.replace(/[^A-Za-z0-9._-]/g, "_")}.rdp`;
}
