/* workerapp._native: chains of SHA-512 over 64-byte digests, the loop run without the GIL.
 *
 * A task's work is r = sha512(body), then r = sha512(r) another iterations - 1 times. After the
 * first hash every message is one 64-byte digest, so each further iteration is exactly one
 * SHA-512 compression (FIPS 180-4, section 6.4.2) of one block whose padding never changes:
 * the digest fills words 0-7, word 8 is the single 1 bit, words 9-14 are zero and word 15 is the
 * message length, 512 bits. The digest stays as eight 64-bit words from one iteration to the
 * next (SHA-512 words are big-endian, so the digest bytes are the state words in order), and is
 * converted to bytes only at the end.
 *
 * K and the initial hash value are FIPS 180-4 sections 4.2.3 and 5.3.5: the first 64 bits of the
 * fractional parts of the cube roots of the first 80 primes and of the square roots of the
 * first 8 primes (computed exactly with integer roots, then written out here).
 */
#ifdef SHA512CHAIN_SELFTEST
/* Built alone (no Python) with a main() below: how tests/test_arm64.py runs the kernels of
 * another architecture under an emulator. */
#include <stdio.h>
#include <stdlib.h>
typedef long Py_ssize_t;
#else
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif
#include <stdint.h>
#include <string.h>

static const uint64_t K[80] = {
    UINT64_C(0x428a2f98d728ae22), UINT64_C(0x7137449123ef65cd), UINT64_C(0xb5c0fbcfec4d3b2f),
    UINT64_C(0xe9b5dba58189dbbc), UINT64_C(0x3956c25bf348b538), UINT64_C(0x59f111f1b605d019),
    UINT64_C(0x923f82a4af194f9b), UINT64_C(0xab1c5ed5da6d8118), UINT64_C(0xd807aa98a3030242),
    UINT64_C(0x12835b0145706fbe), UINT64_C(0x243185be4ee4b28c), UINT64_C(0x550c7dc3d5ffb4e2),
    UINT64_C(0x72be5d74f27b896f), UINT64_C(0x80deb1fe3b1696b1), UINT64_C(0x9bdc06a725c71235),
    UINT64_C(0xc19bf174cf692694), UINT64_C(0xe49b69c19ef14ad2), UINT64_C(0xefbe4786384f25e3),
    UINT64_C(0x0fc19dc68b8cd5b5), UINT64_C(0x240ca1cc77ac9c65), UINT64_C(0x2de92c6f592b0275),
    UINT64_C(0x4a7484aa6ea6e483), UINT64_C(0x5cb0a9dcbd41fbd4), UINT64_C(0x76f988da831153b5),
    UINT64_C(0x983e5152ee66dfab), UINT64_C(0xa831c66d2db43210), UINT64_C(0xb00327c898fb213f),
    UINT64_C(0xbf597fc7beef0ee4), UINT64_C(0xc6e00bf33da88fc2), UINT64_C(0xd5a79147930aa725),
    UINT64_C(0x06ca6351e003826f), UINT64_C(0x142929670a0e6e70), UINT64_C(0x27b70a8546d22ffc),
    UINT64_C(0x2e1b21385c26c926), UINT64_C(0x4d2c6dfc5ac42aed), UINT64_C(0x53380d139d95b3df),
    UINT64_C(0x650a73548baf63de), UINT64_C(0x766a0abb3c77b2a8), UINT64_C(0x81c2c92e47edaee6),
    UINT64_C(0x92722c851482353b), UINT64_C(0xa2bfe8a14cf10364), UINT64_C(0xa81a664bbc423001),
    UINT64_C(0xc24b8b70d0f89791), UINT64_C(0xc76c51a30654be30), UINT64_C(0xd192e819d6ef5218),
    UINT64_C(0xd69906245565a910), UINT64_C(0xf40e35855771202a), UINT64_C(0x106aa07032bbd1b8),
    UINT64_C(0x19a4c116b8d2d0c8), UINT64_C(0x1e376c085141ab53), UINT64_C(0x2748774cdf8eeb99),
    UINT64_C(0x34b0bcb5e19b48a8), UINT64_C(0x391c0cb3c5c95a63), UINT64_C(0x4ed8aa4ae3418acb),
    UINT64_C(0x5b9cca4f7763e373), UINT64_C(0x682e6ff3d6b2b8a3), UINT64_C(0x748f82ee5defb2fc),
    UINT64_C(0x78a5636f43172f60), UINT64_C(0x84c87814a1f0ab72), UINT64_C(0x8cc702081a6439ec),
    UINT64_C(0x90befffa23631e28), UINT64_C(0xa4506cebde82bde9), UINT64_C(0xbef9a3f7b2c67915),
    UINT64_C(0xc67178f2e372532b), UINT64_C(0xca273eceea26619c), UINT64_C(0xd186b8c721c0c207),
    UINT64_C(0xeada7dd6cde0eb1e), UINT64_C(0xf57d4f7fee6ed178), UINT64_C(0x06f067aa72176fba),
    UINT64_C(0x0a637dc5a2c898a6), UINT64_C(0x113f9804bef90dae), UINT64_C(0x1b710b35131c471b),
    UINT64_C(0x28db77f523047d84), UINT64_C(0x32caab7b40c72493), UINT64_C(0x3c9ebe0a15c9bebc),
    UINT64_C(0x431d67c49c100d4c), UINT64_C(0x4cc5d4becb3e42b6), UINT64_C(0x597f299cfc657e2a),
    UINT64_C(0x5fcb6fab3ad6faec), UINT64_C(0x6c44198c4a475817)
};

static const uint64_t IV[8] = {
    UINT64_C(0x6a09e667f3bcc908), UINT64_C(0xbb67ae8584caa73b), UINT64_C(0x3c6ef372fe94f82b),
    UINT64_C(0xa54ff53a5f1d36f1), UINT64_C(0x510e527fade682d1), UINT64_C(0x9b05688c2b3e6c1f),
    UINT64_C(0x1f83d9abfb41bd6b), UINT64_C(0x5be0cd19137e2179)
};

/* FIPS 180-4 section 4.1.3, the SHA-512 functions. */
#define ROTR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define BSIG0(x) (ROTR(x, 28) ^ ROTR(x, 34) ^ ROTR(x, 39))
#define BSIG1(x) (ROTR(x, 14) ^ ROTR(x, 18) ^ ROTR(x, 41))
#define SSIG0(x) (ROTR(x, 1) ^ ROTR(x, 8) ^ ((x) >> 7))
#define SSIG1(x) (ROTR(x, 19) ^ ROTR(x, 61) ^ ((x) >> 6))
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))

/* Word t of the message schedule, kept in a window of 16: words 16-79 are computed in place. */
#define W(t) ((t) < 16 ? w[(t) & 15] \
    : (w[(t) & 15] += SSIG1(w[((t) - 2) & 15]) + w[((t) - 7) & 15] + SSIG0(w[((t) - 15) & 15])))

/* Round t; instead of shifting the eight working variables, the callers rotate their names. */
#define ROUND(a, b, c, d, e, f, g, h, t) do { \
        uint64_t t1 = (h) + BSIG1(e) + CH(e, f, g) + K[t] + W(t); \
        uint64_t t2 = BSIG0(a) + MAJ(a, b, c); \
        (d) += t1; \
        (h) = t1 + t2; \
    } while (0)

/* Eight rounds from t with the round macro R (scalar ROUND, or VROUND on vectors below). */
#define ROUNDS8(R, t) do { \
        R(a, b, c, d, e, f, g, h, (t)); \
        R(h, a, b, c, d, e, f, g, (t) + 1); \
        R(g, h, a, b, c, d, e, f, (t) + 2); \
        R(f, g, h, a, b, c, d, e, (t) + 3); \
        R(e, f, g, h, a, b, c, d, (t) + 4); \
        R(d, e, f, g, h, a, b, c, (t) + 5); \
        R(c, d, e, f, g, h, a, b, (t) + 6); \
        R(b, c, d, e, f, g, h, a, (t) + 7); \
    } while (0)
#define ROUNDS80(R) do { \
        ROUNDS8(R, 0); ROUNDS8(R, 8); ROUNDS8(R, 16); ROUNDS8(R, 24); ROUNDS8(R, 32); \
        ROUNDS8(R, 40); ROUNDS8(R, 48); ROUNDS8(R, 56); ROUNDS8(R, 64); ROUNDS8(R, 72); \
    } while (0)

/* m <- SHA-512(m) for a 64-byte message m held as eight big-endian words. */
static inline void
hash_digest(uint64_t m[8])
{
    uint64_t w[16] = {m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7],
                      UINT64_C(0x8000000000000000), 0, 0, 0, 0, 0, 0, 512};
    uint64_t a = IV[0], b = IV[1], c = IV[2], d = IV[3];
    uint64_t e = IV[4], f = IV[5], g = IV[6], h = IV[7];
    ROUNDS80(ROUND);
    m[0] = IV[0] + a; m[1] = IV[1] + b; m[2] = IV[2] + c; m[3] = IV[3] + d;
    m[4] = IV[4] + e; m[5] = IV[5] + f; m[6] = IV[6] + g; m[7] = IV[7] + h;
}

static void
load_words(uint64_t m[8], const unsigned char *bytes)
{
    for (int i = 0; i < 8; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++)
            v = (v << 8) | bytes[8 * i + j];
        m[i] = v;
    }
}

static void
store_words(unsigned char *bytes, const uint64_t m[8])
{
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++)
            bytes[8 * i + j] = (unsigned char)(m[i] >> (56 - 8 * j));
}

/* ---------------------------------------------------------------------------------------------
 * Several chains at once, one chain in each 64-bit lane of a vector, the CPU's features checked
 * at run time:
 *   avx512: eight lanes of 512-bit vectors (AVX-512F), with the rotate (vprorq) and the
 *           three-input logic (vpternlogq) of AVX-512; four lanes of 256-bit vectors with the same
 *           instructions (AVX-512VL) when four chains or fewer are left;
 *   avx2:   four lanes of 256-bit vectors; a rotate is two shifts and an OR.
 * Chains of different lengths share the lanes: each call runs until the shortest chain in the
 * lanes ends, then the next waiting chain takes its lane; the last chain left runs alone on the
 * scalar code (as fast as a vector kernel with one lane busy: each round waits on the one before).
 */
typedef struct {
    uint64_t m[8];
    long long left;  /* iterations still to do */
} Chain;

/* The kernels ``chains`` can use, best first; which ones this CPU has is set at import. */
enum { KERNEL_AVX512, KERNEL_AVX2, KERNEL_SHA512CE, KERNEL_SCALAR, KERNEL_COUNT };
static const char *const kernel_names[KERNEL_COUNT] = {"avx512", "avx2", "sha512ce", "scalar"};
static const int kernel_width[KERNEL_COUNT] = {8, 4, 1, 1};
static int kernel_ok[KERNEL_COUNT] = {0, 0, 0, 1};

typedef void (*OneFn)(uint64_t m[8]);
/* The fastest code for one chain on this CPU: hash_digest, or hash_digest_ce on arm64. */
static OneFn hash_one = hash_digest;

/* ---------------------------------------------------------------------------------------------
 * sha512ce: one chain with the SHA-512 instructions of the Armv8.2 crypto extension (FEAT_SHA512:
 * Graviton 3 and later), checked at run time (HWCAP_SHA512). The state is four pairs of words,
 * (a, b), (c, d), (e, f), (g, h), low lane first, and the schedule eight pairs (W[2i], W[2i+1]).
 * Per the Arm ARM, SHA512H d, n, m does the Sigma1/Ch half of two rounds: with n = (f, g),
 * m = (d, e) and d = (g + K[t+1] + W[t+1], h + K[t] + W[t]), it gives (T1 of round t + 1, T1 of
 * round t); SHA512H2 d, n, m, with those, n = (c, .) and m = (a, b), gives the new (a, b); the new
 * (e, f) is (c, d) + the T1s. SHA512SU0 and SHA512SU1 compute two schedule words:
 * su0((W[t-16], W[t-15]), (W[t-14], .)) adds the sigma0s, su1 of that, (W[t-2], W[t-1]) and
 * (W[t-7], W[t-6]) adds the sigma1s and the W[t-7]s.
 */
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define HAVE_ARM_SHA512 1
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_SHA512
#define HWCAP_SHA512 (1UL << 21)
#endif

__attribute__((target("arch=armv8.2-a+sha3")))
static void
hash_digest_ce(uint64_t m[8])
{
    const uint64x2_t iv0 = vld1q_u64(IV), iv1 = vld1q_u64(IV + 2);
    const uint64x2_t iv2 = vld1q_u64(IV + 4), iv3 = vld1q_u64(IV + 6);
    const uint64_t pad[8] = {UINT64_C(0x8000000000000000), 0, 0, 0, 0, 0, 0, 512};
    uint64x2_t w[8] = {vld1q_u64(m), vld1q_u64(m + 2), vld1q_u64(m + 4), vld1q_u64(m + 6),
                       vld1q_u64(pad), vld1q_u64(pad + 2), vld1q_u64(pad + 4), vld1q_u64(pad + 6)};
    uint64x2_t ab = iv0, cd = iv1, ef = iv2, gh = iv3;
    for (int j = 0; j < 40; j++) {  /* rounds 2j and 2j + 1 */
        if (j >= 8)
            w[j & 7] = vsha512su1q_u64(vsha512su0q_u64(w[j & 7], w[(j + 1) & 7]), w[(j + 7) & 7],
                                       vextq_u64(w[(j + 4) & 7], w[(j + 5) & 7], 1));
        uint64x2_t kw = vaddq_u64(vld1q_u64(K + 2 * j), w[j & 7]);
        uint64x2_t t1 = vsha512hq_u64(vaddq_u64(gh, vextq_u64(kw, kw, 1)), vextq_u64(ef, gh, 1),
                                      vextq_u64(cd, ef, 1));
        uint64x2_t next_ab = vsha512h2q_u64(t1, cd, ab);
        gh = ef;
        ef = vaddq_u64(cd, t1);
        cd = ab;
        ab = next_ab;
    }
    vst1q_u64(m, vaddq_u64(iv0, ab));
    vst1q_u64(m + 2, vaddq_u64(iv1, cd));
    vst1q_u64(m + 4, vaddq_u64(iv2, ef));
    vst1q_u64(m + 6, vaddq_u64(iv3, gh));
}

static void
detect_arm_kernels(void)
{
    kernel_ok[KERNEL_SHA512CE] = (getauxval(AT_HWCAP) & HWCAP_SHA512) != 0;
    if (kernel_ok[KERNEL_SHA512CE])
        hash_one = hash_digest_ce;
}
#else
static void
detect_arm_kernels(void)
{
}
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86_KERNELS 1
#include <immintrin.h>

/* The rounds on vectors of type VT: the V* operations below are defined before each kernel. */
#define VBSIG0(x) VXOR3(VROTR(x, 28), VROTR(x, 34), VROTR(x, 39))
#define VBSIG1(x) VXOR3(VROTR(x, 14), VROTR(x, 18), VROTR(x, 41))
#define VSSIG0(x) VXOR3(VROTR(x, 1), VROTR(x, 8), VSHR((x), 7))
#define VSSIG1(x) VXOR3(VROTR(x, 19), VROTR(x, 61), VSHR((x), 6))
#define VW(t) ((t) < 16 ? v[(t) & 15] \
    : (v[(t) & 15] = VADD(VADD(v[(t) & 15], VSSIG1(v[((t) - 2) & 15])), \
                          VADD(v[((t) - 7) & 15], VSSIG0(v[((t) - 15) & 15])))))
#define VROUND(a, b, c, d, e, f, g, h, t) do { \
        VT t1 = VADD(VADD((h), VBSIG1(e)), VADD(VADD(VCH(e, f, g), VSET(K[t])), VW(t))); \
        VT t2 = VADD(VBSIG0(a), VMAJ(a, b, c)); \
        (d) = VADD((d), t1); \
        (h) = VADD(t1, t2); \
    } while (0)

/* The body of a kernel of N lanes: ``count`` iterations of the chains in ``lane`` at once. */
#define KERNEL_BODY(N) do { \
        VT m[8]; \
        uint64_t buf[N]; \
        for (int i = 0; i < 8; i++) { \
            for (int j = 0; j < (N); j++) \
                buf[j] = lane[j]->m[i]; \
            m[i] = VLOAD(buf); \
        } \
        for (long long n = 0; n < count; n++) { \
            VT v[16] = {m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], \
                        VSET(UINT64_C(0x8000000000000000)), VSET(0), VSET(0), VSET(0), \
                        VSET(0), VSET(0), VSET(0), VSET(512)}; \
            VT a = VSET(IV[0]), b = VSET(IV[1]), c = VSET(IV[2]), d = VSET(IV[3]); \
            VT e = VSET(IV[4]), f = VSET(IV[5]), g = VSET(IV[6]), h = VSET(IV[7]); \
            ROUNDS80(VROUND); \
            m[0] = VADD(VSET(IV[0]), a); m[1] = VADD(VSET(IV[1]), b); \
            m[2] = VADD(VSET(IV[2]), c); m[3] = VADD(VSET(IV[3]), d); \
            m[4] = VADD(VSET(IV[4]), e); m[5] = VADD(VSET(IV[5]), f); \
            m[6] = VADD(VSET(IV[6]), g); m[7] = VADD(VSET(IV[7]), h); \
        } \
        for (int i = 0; i < 8; i++) { \
            VSTORE(buf, m[i]); \
            for (int j = 0; j < (N); j++) \
                lane[j]->m[i] = buf[j]; \
        } \
    } while (0)

/* AVX2: four lanes of 256 bits. */
#define VT __m256i
#define VLOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define VSTORE(p, x) _mm256_storeu_si256((__m256i *)(p), (x))
#define VADD(x, y) _mm256_add_epi64((x), (y))
#define VSET(v) _mm256_set1_epi64x((long long)(v))
#define VSHR(x, n) _mm256_srli_epi64((x), (n))
#define VROTR(x, n) _mm256_or_si256(VSHR((x), (n)), _mm256_slli_epi64((x), 64 - (n)))
#define VXOR3(x, y, z) _mm256_xor_si256(_mm256_xor_si256((x), (y)), (z))
#define VCH(x, y, z) _mm256_xor_si256((z), _mm256_and_si256((x), _mm256_xor_si256((y), (z))))
#define VMAJ(x, y, z) _mm256_or_si256(_mm256_and_si256((x), (y)), \
                                      _mm256_and_si256((z), _mm256_or_si256((x), (y))))
__attribute__((target("avx2")))
static void
hash4_avx2(Chain **lane, long long count)
{
    KERNEL_BODY(4);
}
#undef VROTR
#undef VXOR3
#undef VCH
#undef VMAJ

/* AVX-512VL: four lanes of 256 bits, with the rotate and three-input logic of AVX-512.
 * vpternlogq's immediate is the truth table of (x, y, z) = (0xf0, 0xcc, 0xaa): x ^ y ^ z is
 * 0x96, Ch 0xca, Maj 0xe8. */
#define VROTR(x, n) _mm256_ror_epi64((x), (n))
#define VXOR3(x, y, z) _mm256_ternarylogic_epi64((x), (y), (z), 0x96)
#define VCH(x, y, z) _mm256_ternarylogic_epi64((x), (y), (z), 0xca)
#define VMAJ(x, y, z) _mm256_ternarylogic_epi64((x), (y), (z), 0xe8)
__attribute__((target("avx2,avx512f,avx512vl")))
static void
hash4_avx512vl(Chain **lane, long long count)
{
    KERNEL_BODY(4);
}
#undef VT
#undef VLOAD
#undef VSTORE
#undef VADD
#undef VSET
#undef VSHR
#undef VROTR
#undef VXOR3
#undef VCH
#undef VMAJ

/* AVX-512F: eight lanes of 512 bits. */
#define VT __m512i
#define VLOAD(p) _mm512_loadu_si512((const void *)(p))
#define VSTORE(p, x) _mm512_storeu_si512((void *)(p), (x))
#define VADD(x, y) _mm512_add_epi64((x), (y))
#define VSET(v) _mm512_set1_epi64((long long)(v))
#define VSHR(x, n) _mm512_srli_epi64((x), (n))
#define VROTR(x, n) _mm512_ror_epi64((x), (n))
#define VXOR3(x, y, z) _mm512_ternarylogic_epi64((x), (y), (z), 0x96)
#define VCH(x, y, z) _mm512_ternarylogic_epi64((x), (y), (z), 0xca)
#define VMAJ(x, y, z) _mm512_ternarylogic_epi64((x), (y), (z), 0xe8)
__attribute__((target("avx2,avx512f")))
static void
hash8_avx512(Chain **lane, long long count)
{
    KERNEL_BODY(8);
}

static void
detect_x86_kernels(void)
{
    __builtin_cpu_init();
    kernel_ok[KERNEL_AVX2] = __builtin_cpu_supports("avx2");
    kernel_ok[KERNEL_AVX512] = kernel_ok[KERNEL_AVX2] && __builtin_cpu_supports("avx512f")
                               && __builtin_cpu_supports("avx512vl");
}
#else
static void
detect_x86_kernels(void)
{
}
#endif

/* Sets kernel_ok and hash_one from the CPU's features, once, at import. */
static void
detect_kernels(void)
{
    detect_x86_kernels();
    detect_arm_kernels();
}

typedef void (*LaneFn)(Chain **lane, long long count);

/* Run every chain to its end with ``kernel`` (one that ``kernel_ok`` allows). */
static void
run_chains(Chain *chains, Py_ssize_t n, int kernel)
{
#ifdef HAVE_X86_KERNELS
    if (kernel != KERNEL_SCALAR) {
        const int width = kernel_width[kernel];
        LaneFn wide = kernel == KERNEL_AVX512 ? hash8_avx512 : hash4_avx2;
        LaneFn narrow = kernel == KERNEL_AVX512 ? hash4_avx512vl : NULL;
        Chain spare = {{0}, 0};
        Chain *lane[8] = {NULL};
        Chain *use[8];
        Py_ssize_t next = 0;
        for (;;) {
            int active = 0;
            long long step = -1;
            for (int j = 0; j < width; j++) {
                if (lane[j] != NULL && lane[j]->left == 0)
                    lane[j] = NULL;
                while (lane[j] == NULL && next < n) {
                    if (chains[next].left > 0)
                        lane[j] = &chains[next];
                    next++;
                }
                if (lane[j] != NULL) {
                    use[active++] = lane[j];
                    if (step < 0 || lane[j]->left < step)
                        step = lane[j]->left;
                }
            }
            if (active < 2)
                break;  /* the one left (if any) runs on the scalar code below */
            if (narrow != NULL && active <= 4) {
                for (int j = active; j < 4; j++)
                    use[j] = &spare;
                narrow(use, step);
            } else {
                for (int j = active; j < width; j++)
                    use[j] = &spare;
                wide(use, step);
            }
            for (int j = 0; j < active; j++)
                use[j]->left -= step;
        }
    }
#endif
    OneFn one = kernel == KERNEL_SCALAR ? hash_digest : hash_one;
    for (Py_ssize_t i = 0; i < n; i++)
        for (; chains[i].left > 0; chains[i].left--)
            one(chains[i].m);
}

#ifndef SHA512CHAIN_SELFTEST
/* The best kernel this CPU has. */
static int
best_kernel(void)
{
    for (int k = 0; k < KERNEL_COUNT; k++)
        if (kernel_ok[k])
            return k;
    return KERNEL_SCALAR;
}

/* The kernel called ``name`` (the best when NULL), or -1 with ValueError set. */
static int
parse_kernel(const char *name)
{
    for (int k = 0; k < KERNEL_COUNT; k++)
        if (kernel_ok[k] && (name == NULL || strcmp(name, kernel_names[k]) == 0))
            return k;
    PyErr_Format(PyExc_ValueError, "kernel '%s': this CPU has no such kernel (see KERNELS)", name);
    return -1;
}

PyDoc_STRVAR(chain_doc,
"chain(digest, count, /, kernel=None) -> bytes\n\n"
"Apply SHA-512 ``count`` times to the 64-byte ``digest`` (each time to the previous raw\n"
"digest) and return the last digest; ``count`` 0 returns ``digest`` itself. ``kernel``: one of\n"
"``KERNELS`` (a vector kernel runs one chain on the best code for one), the best when None.\n"
"The GIL is released while the chain runs.");

static PyObject *
chain(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"", "", "kernel", NULL};
    Py_buffer digest;
    long long count;
    const char *name = NULL;
    int kernel;
    uint64_t m[8];
    unsigned char out[64];
    OneFn one;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*L|z:chain", keywords, &digest, &count, &name))
        return NULL;
    if (digest.len != 64) {
        PyBuffer_Release(&digest);
        PyErr_Format(PyExc_ValueError, "digest must be 64 bytes, got %zd", digest.len);
        return NULL;
    }
    if (count < 0) {
        PyBuffer_Release(&digest);
        PyErr_SetString(PyExc_ValueError, "count must be >= 0");
        return NULL;
    }
    if ((kernel = parse_kernel(name)) < 0) {
        PyBuffer_Release(&digest);
        return NULL;
    }
    one = kernel == KERNEL_SCALAR ? hash_digest : hash_one;
    load_words(m, digest.buf);
    PyBuffer_Release(&digest);
    Py_BEGIN_ALLOW_THREADS
    for (long long i = 0; i < count; i++)
        one(m);
    Py_END_ALLOW_THREADS
    store_words(out, m);
    return PyBytes_FromStringAndSize((const char *)out, 64);
}

PyDoc_STRVAR(chains_doc,
"chains(digests, counts, /, kernel=None) -> list[bytes]\n\n"
"``chain(digests[i], counts[i])`` for every i, computed together in the vector lanes of\n"
"``kernel``: one of ``KERNELS`` (those this CPU has, best first), the best when None;\n"
"``LANES[kernel]`` chains at once. The GIL is released while they run.");

static PyObject *
chains(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"digests", "counts", "kernel", NULL};
    PyObject *digests, *counts, *result = NULL;
    const char *name = NULL;
    int kernel;
    Py_ssize_t n;
    Chain *work = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|z:chains", keywords, &digests, &counts, &name))
        return NULL;
    if ((kernel = parse_kernel(name)) < 0)
        return NULL;
    digests = PySequence_Fast(digests, "digests must be a sequence");
    if (digests == NULL)
        return NULL;
    counts = PySequence_Fast(counts, "counts must be a sequence");
    if (counts == NULL)
        goto done;
    n = PySequence_Fast_GET_SIZE(digests);
    if (PySequence_Fast_GET_SIZE(counts) != n) {
        PyErr_SetString(PyExc_ValueError, "digests and counts must have the same length");
        goto done;
    }
    work = PyMem_Calloc(n > 0 ? n : 1, sizeof(Chain));
    if (work == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer digest;
        long long count = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(counts, i));
        if (count == -1 && PyErr_Occurred())
            goto done;
        if (count < 0) {
            PyErr_SetString(PyExc_ValueError, "count must be >= 0");
            goto done;
        }
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(digests, i), &digest, PyBUF_SIMPLE) < 0)
            goto done;
        if (digest.len != 64) {
            PyErr_Format(PyExc_ValueError, "digest must be 64 bytes, got %zd", digest.len);
            PyBuffer_Release(&digest);
            goto done;
        }
        load_words(work[i].m, digest.buf);
        PyBuffer_Release(&digest);
        work[i].left = count;
    }
    Py_BEGIN_ALLOW_THREADS
    run_chains(work, n, kernel);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        unsigned char out[64];
        PyObject *item;
        store_words(out, work[i].m);
        item = PyBytes_FromStringAndSize((const char *)out, 64);
        if (item == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, item);
    }
done:
    PyMem_Free(work);
    Py_DECREF(digests);
    Py_XDECREF(counts);
    return result;
}

static PyMethodDef methods[] = {
    {"chain", (PyCFunction)(void (*)(void))chain, METH_VARARGS | METH_KEYWORDS, chain_doc},
    {"chains", (PyCFunction)(void (*)(void))chains, METH_VARARGS | METH_KEYWORDS, chains_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "workerapp._native",
    "SHA-512 chains over 64-byte digests in C, without the GIL (see workerapp/engine.py).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module), *kernels = PyList_New(0), *lanes = PyDict_New();
    int ok = m != NULL && kernels != NULL && lanes != NULL;
    detect_kernels();
    for (int k = 0; ok && k < KERNEL_COUNT; k++) {
        if (kernel_ok[k]) {
            PyObject *name = PyUnicode_FromString(kernel_names[k]);
            PyObject *width = PyLong_FromLong(kernel_width[k]);
            ok = name != NULL && width != NULL && PyList_Append(kernels, name) == 0
                 && PyDict_SetItem(lanes, name, width) == 0;
            Py_XDECREF(name);
            Py_XDECREF(width);
        }
    }
    /* KERNELS: the kernels of ``chains`` on this CPU, best first; LANES: how many chains each
     * runs at once; SIMD: the best vector kernel, "" when there is none. */
    ok = ok && PyModule_AddObject(m, "KERNELS", PyList_AsTuple(kernels)) == 0
         && PyModule_AddObject(m, "LANES", Py_NewRef(lanes)) == 0
         && PyModule_AddStringConstant(m, "SIMD", best_kernel() == KERNEL_SCALAR ? ""
                                       : kernel_names[best_kernel()]) == 0;
    Py_XDECREF(kernels);
    Py_XDECREF(lanes);
    if (!ok) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
#else
/* The self-test program: prints the kernels this CPU has, best first, as NAME/LANES on one line; then for each
 * line "KERNEL HEX COUNT" of stdin (HEX: a 64-byte digest), the hex of chain(HEX, COUNT) computed
 * alone with that kernel. */
int
main(void)
{
    char name[16], hex[129];
    long long count;

    detect_kernels();
    for (int k = 0; k < KERNEL_COUNT; k++)
        if (kernel_ok[k])
            printf("%s/%d ", kernel_names[k], kernel_width[k]);
    printf("\n");
    while (scanf("%15s %128s %lld", name, hex, &count) == 3) {
        unsigned char bytes[64];
        Chain one;
        int kernel = -1;
        for (int k = 0; k < KERNEL_COUNT; k++)
            if (kernel_ok[k] && strcmp(name, kernel_names[k]) == 0)
                kernel = k;
        if (kernel < 0 || strlen(hex) != 128 || count < 0) {
            printf("error\n");
            continue;
        }
        for (int i = 0; i < 64; i++) {
            unsigned int byte;
            sscanf(hex + 2 * i, "%2x", &byte);
            bytes[i] = (unsigned char)byte;
        }
        load_words(one.m, bytes);
        one.left = count;
        run_chains(&one, 1, kernel);
        store_words(bytes, one.m);
        for (int i = 0; i < 64; i++)
            printf("%02x", bytes[i]);
        printf("\n");
    }
    return 0;
}
#endif
