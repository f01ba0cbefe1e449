// The synthetic task: a mixture of K regression rules. Each token belongs to
// one of K clusters; its first D/2 features place it near its cluster's
// centre (that is how the rule is chosen), its last D/2 features z are the
// rule's input, and the target is the cluster's own linear map of z,
// y = A_c · z. One expert can learn one map; a dense FFN of the same active
// width has to fit all K of them at once.

/** mulberry32: a small seeded generator. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(r) {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

class MixtureTask {
  constructor({ dModel, clusters, seed }) {
    this.D = dModel;
    this.K = clusters;
    const half = dModel / 2;
    const r = rng(seed);
    // Cluster centres: well separated in the first half of the features.
    this.centres = Array.from({ length: clusters }, () => Float32Array.from({ length: half }, () => 2 * gaussian(r)));
    // The rules: A_c [D, D/2], scaled so that targets have unit variance.
    this.maps = Array.from({ length: clusters }, () =>
      Float32Array.from({ length: dModel * half }, () => gaussian(r) / Math.sqrt(half)),
    );
  }

  /** A batch of T tokens (x, y as Float32Array [T, D]) and each token's cluster. */
  batch(T, seed, onlyCluster) {
    const { D, K } = this;
    const half = D / 2;
    const r = rng(seed);
    const x = new Float32Array(T * D);
    const y = new Float32Array(T * D);
    const cluster = new Int32Array(T);
    for (let t = 0; t < T; t++) {
      const c = onlyCluster ?? Math.floor(r() * K);
      cluster[t] = c;
      for (let i = 0; i < half; i++) x[t * D + i] = this.centres[c][i] + 0.3 * gaussian(r);
      for (let i = 0; i < half; i++) x[t * D + half + i] = gaussian(r);
      const A = this.maps[c];
      for (let o = 0; o < D; o++) {
        let s = 0;
        for (let i = 0; i < half; i++) s += A[o * half + i] * x[t * D + half + i];
        y[t * D + o] = s;
      }
    }
    return { x, y, cluster };
  }
}

module.exports = { MixtureTask };
