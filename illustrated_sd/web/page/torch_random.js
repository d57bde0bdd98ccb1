// torch's CPU random numbers, in JavaScript: torch.randn(n, generator=torch.Generator().manual_seed(seed)).
// The page draws its starting noise here, so a seed gives the picture Python gives for it.
//
// torch's CPU generator is the Mersenne Twister mt19937 (32-bit numbers). A float32 uniform in [0, 1) keeps the low
// 24 bits of one number: u = (r & 0xffffff) / 2^24. randn (for n ≥ 16, torch's `normal_fill`) first fills all n with
// uniforms, then turns each block of 16 into normals by Box–Muller, pairing u[j] with u[j + 8]:
//     z[j] = √(−2·ln(1 − u[j])) · cos(2π·u[j+8]),   z[j+8] = √(−2·ln(1 − u[j])) · sin(2π·u[j+8])
// and, when n is not a multiple of 16, draws 16 fresh uniforms for the last 16 values and does it again.

// mt19937 seeded as torch's manual_seed does (the seed's low 32 bits); returns a function giving the next uint32.
export function mt19937(seed) {
  const N = 624, M = 397, state = new Uint32Array(N);
  state[0] = Number(BigInt.asUintN(32, BigInt(seed)));
  for (let j = 1; j < N; j++) {
    const p = state[j - 1] ^ (state[j - 1] >>> 30);
    state[j] = (Math.imul(1812433253, p) + j) >>> 0;
  }
  let index = N;
  function twist() {
    for (let i = 0; i < N; i++) {
      const y = (state[i] & 0x80000000) | (state[(i + 1) % N] & 0x7fffffff);
      state[i] = state[(i + M) % N] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    index = 0;
  }
  return function next() {
    if (index >= N) twist();
    let y = state[index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  };
}

// Box–Muller on one block of 16 uniforms, in place (torch's normal_fill_16).
function normal16(data, i) {
  for (let j = 0; j < 8; j++) {
    const radius = Math.sqrt(-2 * Math.log(1 - data[i + j])), theta = 2 * Math.PI * data[i + j + 8];
    data[i + j] = radius * Math.cos(theta);
    data[i + j + 8] = radius * Math.sin(theta);
  }
}

// n standard normal float32 numbers, as torch.randn(n) draws them from a generator seeded with `seed` (n ≥ 16).
export function torchRandn(seed, n) {
  if (n < 16) throw new Error(`torchRandn follows torch's path for n ≥ 16 (got ${n})`);
  const next = mt19937(seed), uniform = () => (next() & 0xffffff) / 16777216;
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = uniform();
  for (let i = 0; i + 16 <= n; i += 16) normal16(data, i);
  if (n % 16 !== 0) {
    for (let j = 0; j < 16; j++) data[n - 16 + j] = uniform();
    normal16(data, n - 16);
  }
  return data;
}
