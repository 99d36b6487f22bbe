"""Sample recordings for the demo and the emulators: real audio made locally.

`call_wav(seed, seconds)` is a playable 8 kHz, 16-bit mono PCM WAV of a made-up
call: a ring-back tone, then two "speakers" taking turns (voiced tones with vibrato
and syllable-like envelopes), and a little line noise. `transcript(seed, seconds)`
is a JSON transcript of the same call with word timings, as speech analytics tools
produce. Both are deterministic in `seed`, so tests can compare bytes.
"""
from __future__ import annotations

import io
import json
import math
import random
import struct
import wave

RATE = 8000
WORDS = ("thank you for calling how can I help you today I would like to check my "
         "order status sure let me look that up for you one moment please it has "
         "shipped and should arrive tomorrow great thanks for your help goodbye").split()


def call_wav(seed: int, seconds: float = 6.0) -> bytes:
    rng = random.Random(seed)
    n = int(seconds * RATE)
    samples = [0.0] * n
    ring = min(n, RATE)                      # one second of 440+480 Hz ring-back
    for i in range(ring):
        on = (i // (RATE // 2)) % 2 == 0
        if on:
            t = i / RATE
            samples[i] = 0.25 * (math.sin(2 * math.pi * 440 * t) + math.sin(2 * math.pi * 480 * t))
    pos = ring
    speaker = 0
    pitches = (rng.uniform(110, 140), rng.uniform(190, 240))
    while pos < n:
        turn = int(rng.uniform(0.8, 2.0) * RATE)
        f0 = pitches[speaker]
        syll = int(RATE * rng.uniform(0.12, 0.22))
        for i in range(pos, min(n, pos + turn)):
            t = i / RATE
            k = (i - pos) % syll
            env = math.sin(math.pi * k / syll) ** 2
            vib = 1 + 0.03 * math.sin(2 * math.pi * 5 * t)
            phase = 2 * math.pi * f0 * vib * t
            voiced = (math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.25 * math.sin(3 * phase))
            samples[i] = 0.3 * env * voiced
        pos += turn + int(RATE * rng.uniform(0.1, 0.3))
        speaker ^= 1
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        noise = random.Random(seed + 1)
        w.writeframes(b"".join(
            struct.pack("<h", max(-32767, min(32767, int((s + noise.gauss(0, 0.01)) * 32767))))
            for s in samples))
    return out.getvalue()


def transcript(seed: int, seconds: float = 6.0, call_id: str = "") -> bytes:
    rng = random.Random(seed)
    t = 1.0
    words = []
    speaker = "agent"
    i = rng.randrange(len(WORDS))
    while t < seconds - 0.3:
        dur = rng.uniform(0.2, 0.45)
        words.append({"word": WORDS[i % len(WORDS)], "start": round(t, 2), "end": round(t + dur, 2),
                      "speaker": speaker, "confidence": round(rng.uniform(0.8, 0.99), 2)})
        t += dur + rng.uniform(0.02, 0.15)
        i += 1
        if rng.random() < 0.15:
            speaker = "customer" if speaker == "agent" else "agent"
    doc = {"call_id": call_id or f"call-{seed}", "language": "en-US", "duration_s": seconds,
           "text": " ".join(w["word"] for w in words), "words": words}
    return (json.dumps(doc, indent=1) + "\n").encode()
