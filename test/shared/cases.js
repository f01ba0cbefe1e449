// The cases on which CUDA ops are compared with something computed another
// way. test/cuda-ops.test.ts runs the `small` lists against the float64
// references (on the CUDA emulator where no GPU is present); the device check
// (scripts/device-check/check.js) runs them and the `atScale` lists against
// the CPU ops on a GPU.
"use strict";
const { range } = require("./rng");

/** [tokens, dModel, experts] */
const gate = {
  small: [
    [1, 16, 4], // one token
    [37, 64, 8],
    [130, 96, 64],
  ],
  atScale: [
    [1, 64, 8],
    [1000, 256, 64],
    [8192, 1024, 64],
  ],
};

const route = {
  small: [
    { name: "softmax top-2 renormalised", tokens: 64, experts: 8, options: { topK: 2, renormalize: true } },
    {
      name: "sigmoid top-8 of 64 in 4 of 8 groups",
      tokens: 48,
      experts: 64,
      options: { topK: 8, scoreFunction: "sigmoid", renormalize: true, numGroups: 8, topkGroups: 4 },
    },
    { name: "softmax k = E", tokens: 16, experts: 4, options: { topK: 4 } },
    { name: "one token", tokens: 1, experts: 16, options: { topK: 3 } },
  ],
  atScale: [
    { name: "one token", tokens: 1, experts: 8, options: { topK: 2 } },
    { name: "top-8 of 64 renormalised", tokens: 8192, experts: 64, options: { topK: 8, renormalize: true } },
    {
      name: "sigmoid top-8 of 256 in 4 of 8 groups",
      tokens: 8192,
      experts: 256,
      options: { topK: 8, scoreFunction: "sigmoid", renormalize: true, numGroups: 8, topkGroups: 4 },
    },
    { name: "k = E", tokens: 4096, experts: 8, options: { topK: 8 } },
    { name: "zero tokens", tokens: 0, experts: 16, options: { topK: 2 } },
    { name: "top-4 of 512", tokens: 3000, experts: 512, options: { topK: 4 } },
  ],
};

// `allowed`: the experts tokens may choose; options: permute's, numExperts aside.
const permute = {
  /** Every small case has this many tokens of this width. */
  small: {
    tokens: 48,
    width: 24,
    cases: [
      { name: "dropless, experts 4..7 get no tokens", k: 2, experts: 8, allowed: range(4), options: {} },
      { name: "dropless, k = E", k: 4, experts: 4, allowed: range(4), options: {} },
      {
        name: "capacity 1.0, position policy",
        k: 2,
        experts: 8,
        allowed: range(8),
        options: { capacityFactor: 1.0, dropPolicy: "position" },
      },
      {
        name: "capacity 0.5, probs policy",
        k: 2,
        experts: 8,
        allowed: range(8),
        options: { capacityFactor: 0.5, dropPolicy: "probs" },
      },
      {
        name: "capacity 1.25, probs, padded to capacity",
        k: 2,
        experts: 8,
        allowed: range(8),
        options: { capacityFactor: 1.25, dropPolicy: "probs", padToCapacity: true },
      },
      {
        name: "all tokens to one expert, probs with tied weights",
        k: 1,
        experts: 8,
        allowed: [5],
        options: { capacityFactor: 2, dropPolicy: "probs" },
      },
      {
        name: "all tokens to one expert, padded",
        k: 1,
        experts: 8,
        allowed: [3],
        options: { capacityFactor: 1.0, dropPolicy: "position", padToCapacity: true },
      },
    ],
  },
  atScale: [
    { name: "one token", tokens: 1, width: 64, k: 1, experts: 4, allowed: range(4), options: {} },
    { name: "dropless, empty experts", tokens: 4096, width: 256, k: 2, experts: 8, allowed: range(4), options: {} },
    { name: "dropless, k = E", tokens: 512, width: 128, k: 8, experts: 8, allowed: range(8), options: {} },
    {
      name: "position",
      tokens: 4096,
      width: 256,
      k: 2,
      experts: 8,
      allowed: range(8),
      options: { capacityFactor: 1.0, dropPolicy: "position" },
    },
    {
      name: "probs",
      tokens: 4096,
      width: 256,
      k: 2,
      experts: 8,
      allowed: range(8),
      options: { capacityFactor: 0.7, dropPolicy: "probs" },
    },
    {
      name: "probs, padded",
      tokens: 4096,
      width: 256,
      k: 2,
      experts: 8,
      allowed: range(8),
      options: { capacityFactor: 1.25, dropPolicy: "probs", padToCapacity: true },
    },
    {
      name: "all to one expert, probs",
      tokens: 2048,
      width: 64,
      k: 1,
      experts: 8,
      allowed: [3],
      options: { capacityFactor: 2.0, dropPolicy: "probs" },
    },
    { name: "odd width", tokens: 333, width: 7, k: 3, experts: 5, allowed: range(5), options: {} },
    {
      name: "8192 x 1024, top-8 of 64",
      tokens: 8192,
      width: 1024,
      k: 8,
      experts: 64,
      allowed: range(64),
      options: { capacityFactor: 1.25, dropPolicy: "probs" },
    },
  ],
};

/** Row maps no permute makes (rows read by several pairs, by none; dropped pairs): [tokens, width, k, rows]. */
const sharedRows = {
  atScale: [
    [300, 72, 3, 50],
    [257, 9, 2, 600],
  ],
};

/** [kind, rows, width] */
const activation = {
  atScale: [...["relu", "gelu", "silu", "swiglu", "geglu"].map((kind) => [kind, 1024, 512]), ["swiglu", 3, 6]],
};

// counts: rows per expert; k, n: x [R, K] · w [L, K, N]. mmaSync: also run on
// the mma.sync kernel (MOE_EP_GG_KERNEL=sm80), which Hopper GPUs run only when asked.
const groupedGemm = {
  small: [
    { name: "zero-row experts", counts: [0, 37, 0, 130, 5], k: 64, n: 136 },
    { name: "all rows on one expert", counts: [0, 0, 200, 0], k: 128, n: 64 },
    { name: "one row", counts: [1], k: 8, n: 8 },
  ],
  atScale: [
    { name: "zero-row experts", counts: [0, 300, 0, 17, 129], k: 256, n: 512, mmaSync: true },
    { name: "all rows on one expert", counts: [0, 0, 1000, 0], k: 128, n: 136, mmaSync: false },
    { name: "partial tiles", counts: [1, 127, 129, 255], k: 72, n: 200, mmaSync: true },
    { name: "one expert", counts: [4096], k: 1024, n: 1024, mmaSync: true },
  ],
};

module.exports = { gate, route, permute, sharedRows, activation, groupedGemm };
