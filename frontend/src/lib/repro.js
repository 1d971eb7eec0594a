// Repeating a run without the browser: the `trainboard train` command line for a resolved
// config saved as a file, and that file as a download.

/** A word for a POSIX shell: bare when it is safe, else single-quoted. */
export function shellQuote(word) {
  const s = String(word);
  if (s !== '' && /^[\w@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A file name for a run's resolved config: `NAME.yaml`, safe on every filesystem. */
export function configFileName(name) {
  const stem = String(name || 'run').trim().replace(/[^\w.-]+/g, '-').replace(/^[-.]+|[-.]+$/g, '');
  return `${stem || 'run'}.yaml`;
}

/** `trainboard train FILE --name NAME --seed N [--log-path P]`: the same run, in a terminal. */
export function trainCommand({ file, name = null, seed = 0, logPath = null }) {
  const words = ['trainboard', 'train', file];
  if (name) words.push('--name', name);
  words.push('--seed', String(Number(seed) || 0));
  if (logPath) words.push('--log-path', logPath);
  return words.map(shellQuote).join(' ');
}

/** A `blob:` URL of YAML text for an `<a download>`; revoke it when done. */
export function yamlBlobUrl(text) {
  return URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
}
