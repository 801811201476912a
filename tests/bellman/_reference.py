"""Independent NumPy references (float64 loops) and random inputs for the Bellman tests."""

import numpy as np


def np_lambda_returns(r, d, v, lam):
    r, d, v = (np.asarray(x, np.float64) for x in (r, d, v))
    lam = np.broadcast_to(np.asarray(lam, np.float64), r.shape)
    g = np.zeros_like(r)
    nxt = v[-1]
    for t in reversed(range(len(r))):
        g[t] = r[t] + d[t] * ((1 - lam[t]) * v[t] + lam[t] * nxt)
        nxt = g[t]
    return g


def np_discounted_returns(r, d, bootstrap):
    r, d = np.asarray(r, np.float64), np.asarray(d, np.float64)
    g = np.zeros_like(r)
    nxt = float(bootstrap)
    for t in reversed(range(len(r))):
        g[t] = r[t] + d[t] * nxt
        nxt = g[t]
    return g


def np_gae(r, d, lam, values):
    r, d, values = (np.asarray(x, np.float64) for x in (r, d, values))
    lam = np.broadcast_to(np.asarray(lam, np.float64), r.shape)
    a = np.zeros_like(r)
    nxt = 0.0
    for t in reversed(range(len(r))):
        delta = r[t] + d[t] * values[t + 1] - values[t]
        a[t] = delta + d[t] * lam[t] * nxt
        nxt = a[t]
    return a


def np_n_step(r, d, v, n, lam=1.0):
    """Per start t: bootstrap from v at the window's last step, back up over the window."""
    r, d, v = (np.asarray(x, np.float64) for x in (r, d, v))
    lam = np.broadcast_to(np.asarray(lam, np.float64), r.shape)
    T = len(r)
    out = np.zeros(T)
    for t in range(T):
        end = min(t + n, T)
        g = v[end - 1]
        for k in reversed(range(t, end)):
            g = r[k] + d[k] * ((1 - lam[k]) * v[k] + lam[k] * g)
        out[t] = g
    return out


def trajectory(rng, T, *, episode_ends=True, dtype=np.float32):
    """Random rewards, discounts (with zeros at episode ends), values and per-step lambdas."""
    r = rng.normal(size=T)
    d = np.full(T, 0.9)
    if episode_ends:
        d[rng.random(T) < 0.2] = 0.0
    v = rng.normal(size=T)
    lam = rng.uniform(0.0, 1.0, size=T)
    return tuple(x.astype(dtype) for x in (r, d, v, lam))
