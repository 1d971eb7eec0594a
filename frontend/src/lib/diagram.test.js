import { describe, it, expect } from 'vitest';
import { parseMermaid, FALLBACK_EDGES } from './diagram.js';

// What backend/fsm/machine.py to_mermaid(State.TRAINING) writes.
const text = `stateDiagram-v2
    [*] --> Idle: create
    Idle --> Training: started
    Training --> Complete: completed
    Training --> Error: failed
    Training --> Stopped: stopped
    Stopped --> Training: resumed
    Error --> Training: resumed
    Training --> Training: stop_requested (stopping)
    Complete --> [*]
    classDef current fill:#f59e0b,stroke:#b45309,color:#111,font-weight:bold
    class Training current`;

describe('the lifecycle diagram', () => {
  it('reads edges and the current state', () => {
    const { edges, current } = parseMermaid(text);
    expect(current).toBe('Training');
    expect(edges).toContainEqual({ from: 'Idle', to: 'Training', label: 'started' });
    expect(edges).toContainEqual({ from: 'Complete', to: '[*]', label: '' });
    expect(edges).toContainEqual({ from: 'Training', to: 'Training', label: 'stop_requested (stopping)' });
    expect(edges).toHaveLength(9);
  });
  it('the client fallback draws the same transitions', () => {
    const key = (e) => `${e.from}>${e.to}:${e.label}`;
    expect(new Set(FALLBACK_EDGES.map(key))).toEqual(new Set(parseMermaid(text).edges.map(key)));
  });
});
