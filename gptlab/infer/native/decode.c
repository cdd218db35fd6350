/* One decoding step of a GPT (batch 1, fp32) as a single call: gptlab/infer/native.py.

   Why: sampling one text at a time, a step of the course's model is ~0.8M multiply-adds plus the
   output layer's matrix-vector product. Through torch that is ~30 operator calls of a few
   microseconds each, and small matrix-vector products that run far below the memory's speed. Here
   the whole step reads each weight once, front to back, and makes no call at all.

   It computes what GPT.decode computes (gptlab/model/gpt.py, layers.py) for one row without a key
   mask: embeddings, the blocks (pre- or post-LayerNorm, GELU (tanh) or ReLU, biases or none), the
   final LayerNorm, the output layer in fp32 or as Int8Linear (model/quant.py) computes it. Keys
   and values go into the same KVCache tensors torch uses, so a prompt run by forward() and steps
   run here share one cache. */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Weights are packed in tiles of NT outputs (native.py `pack`): tile i holds the (K, NT) strip of
   W^T for outputs i*NT .. i*NT+NT-1, contiguous, the last tile padded with zeros. A tile's NT sums
   stay in registers while its weights stream past in memory order, so y is written once and the
   weights are read front to back (a row-major W would need a horizontal sum per output; a
   column-major one would reload y for every input). */
#define NT 128

typedef struct {
    const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b;
    const float *ln2_w, *ln2_b, *up_w, *up_b, *down_w, *down_b;
} Layer;

typedef struct {
    int C, H, D, F, V, n_layer, pre_norm, gelu, final_norm, int8_head;
    float eps;
    const float *tok_emb, *pos_emb;            /* (V, C), (context, C) row-major */
    const Layer *layers;                       /* n_layer */
    const float *lnf_w, *lnf_b;                /* final LayerNorm, when final_norm */
    const float *head_w;                       /* packed (V, C), fp32 head */
    const int8_t *head_w8;                     /* packed (V, C), int8 head */
    const float *head_scale, *head_b;          /* (V): int8 row scales; bias or NULL */
} Model;

static void tile_f32(const float *x, const float *w, int K, float *out) {
    float acc[NT] = {0};
    for (int k = 0; k < K; k++, w += NT) {
        const float xk = x[k];
        #pragma omp simd
        for (int j = 0; j < NT; j++) acc[j] += xk * w[j];
    }
    memcpy(out, acc, sizeof acc);
}

/* A large product (the output layer) is split over threads. The library is linked to libgomp,
   which torch has already loaded, so it shares torch's OpenMP runtime and threads. The block's small
   products stay on one thread (waking another costs more than it saves), and a thread gets at
   least 8 tiles (1,024 outputs) so that a many-core machine does not wake them all. */
#define PARALLEL_MIN (1 << 20)  /* weights */
#ifdef _OPENMP
#include <omp.h>
static int threads_for(int K, int N) {
    if ((long)K * N < PARALLEL_MIN) return 1;
    const int cap = (N / NT) / 8 > 1 ? (N / NT) / 8 : 1, n = omp_get_max_threads();
    return n < cap ? n : cap;
}
#else
static int threads_for(int K, int N) { (void)K; (void)N; return 1; }
#endif

/* y (N) = x (K) @ W^T + b, W packed. */
static void matvec(const float *x, const float *Wp, const float *b, float *y, int K, int N) {
    const int threads = threads_for(K, N);
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int n0 = 0; n0 < N; n0 += NT) {
        float acc[NT];
        tile_f32(x, Wp + (size_t)n0 * K, K, acc);
        const int n = N - n0 < NT ? N - n0 : NT;
        for (int j = 0; j < n; j++) y[n0 + j] = acc[j] + (b ? b[n0 + j] : 0.0f);
    }
}

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* The tile's sums for int8 weights: each weight sign-extended and converted once (written out,
   as the compiler's own vectorisation goes through 16-bit integers, ~1.5x slower). */
static void tile_i8(const float *x, const int8_t *w, int K, float *out) {
#if defined(__AVX512F__)
    __m512 a[NT / 16];
    for (int j = 0; j < NT / 16; j++) a[j] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++, w += NT) {
        const __m512 xk = _mm512_set1_ps(x[k]);
        for (int j = 0; j < NT / 16; j++)
            a[j] = _mm512_fmadd_ps(xk, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                _mm_loadu_si128((const __m128i *)(w + 16 * j)))), a[j]);
    }
    for (int j = 0; j < NT / 16; j++) _mm512_storeu_ps(out + 16 * j, a[j]);
#elif defined(__AVX2__)
    __m256 a[NT / 8];
    for (int j = 0; j < NT / 8; j++) a[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++, w += NT) {
        const __m256 xk = _mm256_set1_ps(x[k]);
        for (int j = 0; j < NT / 8; j++)
            a[j] = _mm256_fmadd_ps(xk, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                _mm_loadl_epi64((const __m128i *)(w + 8 * j)))), a[j]);
    }
    for (int j = 0; j < NT / 8; j++) _mm256_storeu_ps(out + 8 * j, a[j]);
#else
    float acc[NT] = {0};
    for (int k = 0; k < K; k++, w += NT) {
        const float xk = x[k];
        #pragma omp simd
        for (int j = 0; j < NT; j++) acc[j] += xk * (float)w[j];
    }
    memcpy(out, acc, sizeof acc);
#endif
}

/* fp32 -> the nearest bf16 (ties to even), back in an fp32: Int8Linear's inputs and outputs are bf16. */
static float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Int8Linear: y = bf16(bf16(x) @ (scale * W8)^T) + b. */
static void matvec_i8(const float *x, const int8_t *Wp, const float *scale, const float *b, float *y,
                      int K, int N, float *xb) {
    for (int k = 0; k < K; k++) xb[k] = bf16_round(x[k]);
    const int threads = threads_for(K, N);
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int n0 = 0; n0 < N; n0 += NT) {
        float acc[NT];
        tile_i8(xb, Wp + (size_t)n0 * K, K, acc);
        const int n = N - n0 < NT ? N - n0 : NT;
        for (int j = 0; j < n; j++) y[n0 + j] = bf16_round(acc[j] * scale[n0 + j]) + (b ? b[n0 + j] : 0.0f);
    }
}

static void layer_norm(const float *x, const float *w, const float *b, float *y, int C, float eps) {
    float mean = 0.0f, var = 0.0f;
    #pragma omp simd reduction(+:mean)
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    #pragma omp simd reduction(+:var)
    for (int i = 0; i < C; i++) { const float d = x[i] - mean; var += d * d; }
    const float r = 1.0f / sqrtf(var / C + eps);
    for (int i = 0; i < C; i++) y[i] = (x[i] - mean) * r * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

/* Self-attention of the new position t over keys 0..t; k, v: this layer's cache, (H, S_max, D).
   `probs`: NULL, or (H, t + 1) for each head's attention weights (an explanation's capture). */
static void attend(const Model *m, const Layer *L, const float *h, float *y, float *qkv, float *s,
                   float *k, float *v, int S_max, int t, float *probs) {
    const int H = m->H, D = m->D, HD = H * D;
    matvec(h, L->qkv_w, L->qkv_b, qkv, m->C, 3 * HD);
    const float scale = 1.0f / sqrtf((float)D);
    for (int hh = 0; hh < H; hh++) {
        float *kh = k + (size_t)hh * S_max * D, *vh = v + (size_t)hh * S_max * D;
        memcpy(kh + (size_t)t * D, qkv + HD + hh * D, sizeof(float) * D);
        memcpy(vh + (size_t)t * D, qkv + 2 * HD + hh * D, sizeof(float) * D);
        const float *q = qkv + hh * D;
        float top = -INFINITY, z = 0.0f;
        for (int j = 0; j <= t; j++) {
            const float *kj = kh + (size_t)j * D;
            float dot = 0.0f;
            #pragma omp simd reduction(+:dot)
            for (int d = 0; d < D; d++) dot += q[d] * kj[d];
            s[j] = dot * scale;
            top = s[j] > top ? s[j] : top;
        }
        for (int j = 0; j <= t; j++) { s[j] = expf(s[j] - top); z += s[j]; }
        if (probs)
            for (int j = 0; j <= t; j++) probs[(size_t)hh * (t + 1) + j] = s[j] / z;
        float *yh = y + hh * D;
        memset(yh, 0, sizeof(float) * D);
        for (int j = 0; j <= t; j++) {
            const float p = s[j] / z, *vj = vh + (size_t)j * D;
            #pragma omp simd
            for (int d = 0; d < D; d++) yh[d] += p * vj[d];
        }
    }
}

static void activate(float *x, int n, int gelu) {
    if (gelu) {  /* GPT-2's tanh approximation, as nn.GELU(approximate="tanh") */
        for (int i = 0; i < n; i++) {
            const float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        }
    } else {
        for (int i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    }
}

static void add(float *x, const float *a, int n) {
    for (int i = 0; i < n; i++) x[i] += a[i];
}

int gptlab_native_abi(void) { return (int)(sizeof(Model) * 100 + sizeof(Layer)); }

int gptlab_scratch_floats(int C, int H, int D, int F, int S_max) { return 4 * C + 4 * H * D + F + S_max; }

/* Logits (V) for `token` at position `pos` in batch row `row`: its key and value written at slot t of
   that row of each layer of the cache k, v: (n_layer, B, H, S_max, D) contiguous fp32, and attention
   over the row's slots 0..t. A row's result depends on nothing but that row (a serving engine's
   slot decodes alone or beside others to the same bits). `scratch`: gptlab_scratch_floats() floats,
   the caller's own, so that threads decoding with one model do not share it. An explanation's
   capture, each NULL when not wanted: `attn` (n_layer, H, t + 1), every layer's attention weights;
   `streams` (n_layer + 1, C), the residual stream after the embeddings and after each block. */
void gptlab_decode(const Model *m, float *k, float *v, int B, int S_max, int row, int token, int pos, int t,
                   float *logits, float *scratch, float *attn, float *streams) {
    const int C = m->C, HD = m->H * m->D;
    float *x = scratch, *h = x + C, *a = h + C, *xb = a + C, *qkv = xb + C, *y = qkv + 3 * HD,
          *f = y + HD, *s = f + m->F;
    const size_t row_size = (size_t)m->H * S_max * m->D, layer_size = (size_t)B * row_size;
    const float *te = m->tok_emb + (size_t)token * C, *pe = m->pos_emb + (size_t)pos * C;
    for (int i = 0; i < C; i++) x[i] = te[i] + pe[i];
    if (streams) memcpy(streams, x, sizeof(float) * C);
    for (int l = 0; l < m->n_layer; l++) {
        const Layer *L = m->layers + l;
        float *kl = k + l * layer_size + row * row_size, *vl = v + l * layer_size + row * row_size;
        float *probs = attn ? attn + (size_t)l * m->H * (t + 1) : NULL;
        if (m->pre_norm) {  /* x + f(ln(x)) */
            layer_norm(x, L->ln1_w, L->ln1_b, h, C, m->eps);
            attend(m, L, h, y, qkv, s, kl, vl, S_max, t, probs);
            matvec(y, L->out_w, L->out_b, a, HD, C);
            add(x, a, C);
            layer_norm(x, L->ln2_w, L->ln2_b, h, C, m->eps);
            matvec(h, L->up_w, L->up_b, f, C, m->F);
            activate(f, m->F, m->gelu);
            matvec(f, L->down_w, L->down_b, a, m->F, C);
            add(x, a, C);
        } else {  /* ln(x + f(x)) */
            attend(m, L, x, y, qkv, s, kl, vl, S_max, t, probs);
            matvec(y, L->out_w, L->out_b, a, HD, C);
            add(a, x, C);
            layer_norm(a, L->ln1_w, L->ln1_b, x, C, m->eps);
            matvec(x, L->up_w, L->up_b, f, C, m->F);
            activate(f, m->F, m->gelu);
            matvec(f, L->down_w, L->down_b, a, m->F, C);
            add(a, x, C);
            layer_norm(a, L->ln2_w, L->ln2_b, x, C, m->eps);
        }
        if (streams) memcpy(streams + (size_t)(l + 1) * C, x, sizeof(float) * C);
    }
    const float *hf = x;
    if (m->final_norm) { layer_norm(x, m->lnf_w, m->lnf_b, h, C, m->eps); hf = h; }
    if (m->int8_head) matvec_i8(hf, m->head_w8, m->head_scale, m->head_b, logits, C, m->V, xb);
    else matvec(hf, m->head_w, m->head_b, logits, C, m->V);
}
