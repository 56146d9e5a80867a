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
#define PY_SSIZE_T_CLEAN
#include <Python.h>
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
 * Several chains at once. On x86-64 CPUs with AVX2 (checked at run time), four chains go through
 * the rounds above together, one in each 64-bit lane of 256-bit vectors; rotations are two shifts
 * and an OR, as AVX2 has no 64-bit rotate. Chains of different lengths share the lanes: when one
 * ends, the next waiting chain takes its lane; the last one left runs alone on the scalar code.
 */
typedef struct {
    uint64_t m[8];
    long long left;  /* iterations still to do */
} Chain;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_KERNEL 1
#include <immintrin.h>

#define VADD(x, y) _mm256_add_epi64((x), (y))
#define VXOR(x, y) _mm256_xor_si256((x), (y))
#define VAND(x, y) _mm256_and_si256((x), (y))
#define VOR(x, y) _mm256_or_si256((x), (y))
#define VSET(v) _mm256_set1_epi64x((long long)(v))
#define VROTR(x, n) VOR(_mm256_srli_epi64((x), (n)), _mm256_slli_epi64((x), 64 - (n)))
#define VBSIG0(x) VXOR(VXOR(VROTR(x, 28), VROTR(x, 34)), VROTR(x, 39))
#define VBSIG1(x) VXOR(VXOR(VROTR(x, 14), VROTR(x, 18)), VROTR(x, 41))
#define VSSIG0(x) VXOR(VXOR(VROTR(x, 1), VROTR(x, 8)), _mm256_srli_epi64((x), 7))
#define VSSIG1(x) VXOR(VXOR(VROTR(x, 19), VROTR(x, 61)), _mm256_srli_epi64((x), 6))
#define VCH(x, y, z) VXOR((z), VAND((x), VXOR((y), (z))))
#define VMAJ(x, y, z) VOR(VAND((x), (y)), VAND((z), VOR((x), (y))))
#define VW(t) ((t) < 16 ? v[(t) & 15] \
    : (v[(t) & 15] = VADD(VADD(v[(t) & 15], VSSIG1(v[((t) - 2) & 15])), \
                          VADD(v[((t) - 7) & 15], VSSIG0(v[((t) - 15) & 15])))))
#define VROUND(a, b, c, d, e, f, g, h, t) do { \
        __m256i t1 = VADD(VADD((h), VBSIG1(e)), VADD(VADD(VCH(e, f, g), VSET(K[t])), VW(t))); \
        __m256i t2 = VADD(VBSIG0(a), VMAJ(a, b, c)); \
        (d) = VADD((d), t1); \
        (h) = VADD(t1, t2); \
    } while (0)

/* ``count`` iterations of the four chains in ``lane`` at once. */
__attribute__((target("avx2")))
static void
hash4(Chain *lane[4], long long count)
{
    __m256i m[8];
    uint64_t out[4];

    for (int i = 0; i < 8; i++)
        m[i] = _mm256_set_epi64x((long long)lane[3]->m[i], (long long)lane[2]->m[i],
                                 (long long)lane[1]->m[i], (long long)lane[0]->m[i]);
    for (long long n = 0; n < count; n++) {
        __m256i v[16] = {m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7],
                         VSET(UINT64_C(0x8000000000000000)), VSET(0), VSET(0), VSET(0),
                         VSET(0), VSET(0), VSET(0), VSET(512)};
        __m256i a = VSET(IV[0]), b = VSET(IV[1]), c = VSET(IV[2]), d = VSET(IV[3]);
        __m256i e = VSET(IV[4]), f = VSET(IV[5]), g = VSET(IV[6]), h = VSET(IV[7]);
        ROUNDS80(VROUND);
        m[0] = VADD(VSET(IV[0]), a); m[1] = VADD(VSET(IV[1]), b);
        m[2] = VADD(VSET(IV[2]), c); m[3] = VADD(VSET(IV[3]), d);
        m[4] = VADD(VSET(IV[4]), e); m[5] = VADD(VSET(IV[5]), f);
        m[6] = VADD(VSET(IV[6]), g); m[7] = VADD(VSET(IV[7]), h);
    }
    for (int i = 0; i < 8; i++) {
        _mm256_storeu_si256((__m256i *)out, m[i]);
        for (int j = 0; j < 4; j++)
            lane[j]->m[i] = out[j];
    }
}

static int
cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
static int
cpu_has_avx2(void)
{
    return 0;
}
#endif

/* Set by PyInit__native from the CPU's features; never changed afterwards. */
static int have_avx2;

/* Run every chain to its end; four at a time in vectors when ``simd`` and the CPU allows. */
static void
run_chains(Chain *chains, Py_ssize_t n, int simd)
{
#ifdef HAVE_AVX2_KERNEL
    if (simd && have_avx2) {
        Chain spare = {{0}, 0};
        Chain *lane[4] = {NULL, NULL, NULL, NULL};
        Chain *use[4];
        Py_ssize_t next = 0;
        for (;;) {
            int active = 0;
            long long step = -1;
            for (int j = 0; j < 4; j++) {
                if (lane[j] != NULL && lane[j]->left == 0)
                    lane[j] = NULL;
                while (lane[j] == NULL && next < n) {
                    if (chains[next].left > 0)
                        lane[j] = &chains[next];
                    next++;
                }
                if (lane[j] != NULL) {
                    active++;
                    if (step < 0 || lane[j]->left < step)
                        step = lane[j]->left;
                }
                use[j] = lane[j] != NULL ? lane[j] : &spare;
            }
            if (active <= 1)
                break;  /* the one left (if any) runs on the scalar code below */
            hash4(use, step);
            for (int j = 0; j < 4; j++)
                if (lane[j] != NULL)
                    lane[j]->left -= step;
        }
    }
#endif
    for (Py_ssize_t i = 0; i < n; i++)
        for (; chains[i].left > 0; chains[i].left--)
            hash_digest(chains[i].m);
}

PyDoc_STRVAR(chain_doc,
"chain(digest, count, /) -> bytes\n\n"
"Apply SHA-512 ``count`` times to the 64-byte ``digest`` (each time to the previous raw\n"
"digest) and return the last digest; ``count`` 0 returns ``digest`` itself. The GIL is\n"
"released while the chain runs.");

static PyObject *
chain(PyObject *module, PyObject *args)
{
    Py_buffer digest;
    long long count;
    uint64_t m[8];
    unsigned char out[64];

    if (!PyArg_ParseTuple(args, "y*L:chain", &digest, &count))
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
    load_words(m, digest.buf);
    PyBuffer_Release(&digest);
    Py_BEGIN_ALLOW_THREADS
    for (long long i = 0; i < count; i++)
        hash_digest(m);
    Py_END_ALLOW_THREADS
    store_words(out, m);
    return PyBytes_FromStringAndSize((const char *)out, 64);
}

PyDoc_STRVAR(chains_doc,
"chains(digests, counts, /, simd=True) -> list[bytes]\n\n"
"``chain(digests[i], counts[i])`` for every i, computed together: four at a time in AVX2\n"
"vector lanes when the CPU has AVX2 and ``simd`` is true (see ``SIMD``). The GIL is released\n"
"while they run.");

static PyObject *
chains(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"digests", "counts", "simd", NULL};
    PyObject *digests, *counts, *result = NULL;
    int simd = 1;
    Py_ssize_t n;
    Chain *work = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|p:chains", keywords,
                                     &digests, &counts, &simd))
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
    run_chains(work, n, simd);
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
    {"chain", chain, METH_VARARGS, chain_doc},
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
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    have_avx2 = cpu_has_avx2();
    /* SIMD: the vector code ``chains`` uses on this CPU, "" when none. */
    if (PyModule_AddStringConstant(m, "SIMD", have_avx2 ? "avx2" : "") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
