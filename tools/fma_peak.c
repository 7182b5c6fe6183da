/* Register FMA peak of this CPU in f32 GFLOP/s, for the "% of peak" columns of
 * docs/benchmarks.md: 12 independent FMA chains per thread (enough to cover the FMA latency on
 * both pipes), zmm (AVX-512) and ymm (AVX2), on 1 and 2 threads. No memory traffic: an upper
 * bound no kernel reaches, not a GEMM measurement.
 *
 *   gcc -O2 -march=native tools/fma_peak.c -o /tmp/fma_peak -lpthread && /tmp/fma_peak
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define IT 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define CHAINS(T, F, S)                                                                   \
    T b = S(1.0000001f), c = S(1e-7f);                                                    \
    T a0 = S(0), a1 = S(1), a2 = S(2), a3 = S(3), a4 = S(4), a5 = S(5), a6 = S(6),        \
      a7 = S(7), a8 = S(8), a9 = S(9), a10 = S(10), a11 = S(11);                          \
    for (long n = 0; n < IT; n++) {                                                       \
        a0 = F(a0, b, c); a1 = F(a1, b, c); a2 = F(a2, b, c); a3 = F(a3, b, c);           \
        a4 = F(a4, b, c); a5 = F(a5, b, c); a6 = F(a6, b, c); a7 = F(a7, b, c);           \
        a8 = F(a8, b, c); a9 = F(a9, b, c); a10 = F(a10, b, c); a11 = F(a11, b, c);       \
    }                                                                                     \
    *(T *)out = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;

#ifdef __AVX512F__
static void *zmm(void *out) { CHAINS(__m512, _mm512_fmadd_ps, _mm512_set1_ps) return 0; }
#endif
static void *ymm(void *out) { CHAINS(__m256, _mm256_fmadd_ps, _mm256_set1_ps) return 0; }

static void run(const char *name, void *(*f)(void *), int lanes) {
    for (int threads = 1; threads <= 2; threads++) {
        pthread_t th[2];
        __m512 out[2];
        double t0 = now();
        for (int i = 0; i < threads; i++) pthread_create(&th[i], 0, f, &out[i]);
        for (int i = 0; i < threads; i++) pthread_join(th[i], 0);
        double dt = now() - t0;
        printf("%s, %d thread(s): %.1f GFLOP/s\n", name, threads,
               threads * (double)IT * 12 * lanes * 2 / dt / 1e9);
    }
}

int main(void) {
#ifdef __AVX512F__
    run("AVX-512 (zmm)", zmm, 16);
#endif
    run("AVX2 (ymm)", ymm, 8);
    return 0;
}
