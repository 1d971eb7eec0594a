import { describe, it, expect } from 'vitest';
import { sweepFacts, trialFacts, bestTrial, spaceFrom } from './sweep.js';

describe('sweep answers', () => {
  it('reads a summary', () => {
    const s = sweepFacts({ sweep_id: 'sweep-1', state: 'Running', budget: 3, done: 1, pruned: 1, best_value: 0.5, objective: 'min_val_loss' });
    expect([s.id, s.budget, s.done, s.pruned, s.bestValue, s.direction]).toEqual(['sweep-1', 3, 1, 1, 0.5, 'minimize']);
    expect(sweepFacts({ id: 'sweep-2', best: { value: 0.7, number: 2 } }).bestTrial).toBe(2);
  });
  it('finds the best told trial, never a pruned one', () => {
    const trials = [
      { number: 0, state: 'complete', value: 0.4 },
      { number: 1, state: 'pruned', value: 0.9 },
      { number: 2, state: 'complete', value: 0.6 },
      { number: 3, state: 'asked' },
    ].map(trialFacts);
    expect(bestTrial(trials, 'maximize').number).toBe(2);
    expect(bestTrial(trials, 'minimize').number).toBe(0);
    expect(trials[1].pruned).toBe(true);
    expect(trials[3].inFlight).toBe(true);
    expect(bestTrial([], 'maximize')).toBe(null);
  });
});

describe('the search space from the wizard’s marks', () => {
  it('ranges and choices', () => {
    const { space, problems } = spaceFrom({
      'SOLVER.BASE_LR': { type: 'float', low: '1e-4', high: '0.1', log: true },
      'SOLVER.SAMPLES_PER_BATCH': { type: 'choice', choices: '2, 4,8' },
      'MODEL.ARCHITECTURE': { type: 'choice', choices: ['unet_3d', 'fpn_3d'] },
      'SOLVER.ITERATION_TOTAL': { type: 'int', low: 10, high: 20 },
    });
    expect(problems).toEqual([]);
    expect(space).toEqual({
      'SOLVER.BASE_LR': { type: 'float', low: 1e-4, high: 0.1, log: true },
      'SOLVER.SAMPLES_PER_BATCH': { type: 'choice', choices: [2, 4, 8] },
      'MODEL.ARCHITECTURE': { type: 'choice', choices: ['unet_3d', 'fpn_3d'] },
      'SOLVER.ITERATION_TOTAL': { type: 'int', low: 10, high: 20, log: false },
    });
  });
  it.each([
    [{ type: 'float', low: 1, high: 1 }, /below the high end/],
    [{ type: 'float', low: 0, high: 1, log: true }, /above 0/],
    [{ type: 'int', low: 1.5, high: 3 }, /integer ends/],
    [{ type: 'choice', choices: '4' }, /at least two/],
  ])('refuses %o', (mark, why) => {
    expect(spaceFrom({ K: mark }).problems[0]).toMatch(why);
  });
});
