import { describe, it, expect } from 'vitest';
import { shellQuote, configFileName, trainCommand } from './repro.js';

describe('the equivalent command line', () => {
  it('quotes only what a shell would split or expand', () => {
    expect(shellQuote('demo_2d.yaml')).toBe('demo_2d.yaml');
    expect(shellQuote('my run')).toBe("'my run'");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
    expect(shellQuote('$HOME')).toBe("'$HOME'");
    expect(shellQuote('')).toBe("''");
  });
  it('names the file after the run', () => {
    expect(configFileName('e2e first run')).toBe('e2e-first-run.yaml');
    expect(configFileName('../../etc')).toBe('etc.yaml');
    expect(configFileName('')).toBe('run.yaml');
  });
  it('repeats the run: file, name, seed and log folder', () => {
    expect(trainCommand({ file: 'a.yaml', name: 'first run', seed: 3 })).toBe("trainboard train a.yaml --name 'first run' --seed 3");
    expect(trainCommand({ file: 'a.yaml', logPath: '/data/logs/x' })).toBe('trainboard train a.yaml --seed 0 --log-path /data/logs/x');
  });
});
