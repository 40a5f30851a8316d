#!/usr/bin/env python3
"""Agents sharing one Helix engine from Python threads.

Each agent keeps its whole conversation as token ids. Every turn it appends an observation (ids
from a seeded generator standing in for a tool's output), asks the engine for an answer, streams
it token by token, and appends the answer to its context. One agent stops listening halfway
through a long answer and cancels it, as an agent does when it has what it needs. The engine
releases the GIL while it waits, so the agents' threads run at the same time.

    PYTHONPATH=build python3 examples/python/agent_loop.py --agents 4 --turns 3
"""
import argparse
import random
import threading
import time

import helix


def run_agent(engine, agent, turns, answer_tokens, results):
    rng = random.Random(1000 + agent)
    context = [rng.randrange(engine.vocab) for _ in range(48)]
    streamed = 0
    cancelled = 0
    for turn in range(turns):
        context += [rng.randrange(engine.vocab) for _ in range(16)]  # the observation
        long_answer = agent == 0 and turn == turns - 1
        stream = engine.stream(context, max_tokens=answer_tokens * (8 if long_answer else 1))
        answer = []
        for event in stream:
            if event.token >= 0:
                answer.append(event.token)
                streamed += 1
            if long_answer and len(answer) == answer_tokens:
                stream.cancel()  # enough: the rest of the stream ends with "cancelled"
            if event.last:
                if event.finish_reason == "cancelled":
                    cancelled += 1
                elif event.finish_reason not in ("length", "stop_token"):
                    raise RuntimeError(f"agent {agent}: {event.finish_reason}: {event.error}")
        context += answer
    results[agent] = (len(context), streamed, cancelled)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layout", default="auto")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=16)
    args = parser.parse_args()

    start = time.monotonic()
    with helix.Engine(model=args.model, workers=args.workers, layout=args.layout) as engine:
        results = {}
        threads = [
            threading.Thread(target=run_agent,
                             args=(engine, a, args.turns, args.answer_tokens, results))
            for a in range(args.agents)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = engine.stats()
    elapsed = time.monotonic() - start
    for agent in sorted(results):
        context, streamed, cancelled = results[agent]
        print(f"agent {agent}: context {context} tokens, {streamed} tokens streamed, "
              f"{cancelled} answer(s) cancelled")
    print(f"{stats['completed']} requests completed, {stats['cancelled']} cancelled, "
          f"{stats['tokens_generated']} tokens on {stats['layout']} in {elapsed:.2f} s")
    if len(results) != args.agents:
        raise SystemExit("an agent failed")


if __name__ == "__main__":
    main()
