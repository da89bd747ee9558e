/* bench_toy_step.c - one training step of the toy U-Net, ours against PyTorch.
 *
 * A step = zero the gradients, forward on a batch of noisy images, MSE loss
 * against the true noise, backward, AdamW update (the work of one step of
 * lesson 03, without data loading, EMA and clipping). The same architecture
 * (the config is passed as JSON), batch and thread count run in PyTorch CPU
 * through bench/toy_unet_torch.py --bench, in the same run, if
 * /usr/bin/python3 has torch. Both report the best of several steps.
 * A shared machine's speed drifts by 5-10% over a minute, so the two take
 * turns: --rounds R (2) rounds of ours then torch; the ratio is best over
 * best, and each round's own ratio is printed too.
 * --paths also times our step with the plain kernels (im2col + sgemm
 * convolutions, sgemm linears: conv2d_use_direct(0), linear_use_direct(0)),
 * to show what the direct kernels buy.
 *
 *   bin/bench_toy_step [--batch 64] [--dataset mnist|emoji] [--channels 32,64,64] [--steps 5] [--rounds 2]
 *                      [--paths] [--no-torch] [--threads 2] [--quick]
 *
 * Target: ours <= 0.7x PyTorch's time.
 */
#include "bench_util.h"
#include "../core/conv2d.h"
#include "../core/linear.h"
#include "../core/optim.h"
#include "../core/rng.h"
#include "../core/toy_unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    toy_unet *net;
    dl_adamw opt;
    dl_tensor x, eps, pred, dpred;
    float *t;
    int *ids;
    double fwd, bwd, upd;     /* seconds of the last step's phases */
} step_ctx;

static void step(void *p)
{
    step_ctx *c = p;
    dl_param_list *params = toy_unet_params(c->net);
    double t0 = bench_now();
    dl_params_zero_grad(params);
    if (toy_unet_forward(c->net, &c->x, c->t, c->ids, &c->pred) != DL_OK) dl_die("forward");
    double t1 = bench_now();
    /* loss = mean((pred - eps)^2)  ->  dloss/dpred = 2 (pred - eps) / n */
    const float k = 2.0f / (float)c->pred.numel;
    for (int64_t i = 0; i < c->pred.numel; i++) c->dpred.data[i] = k * (c->pred.data[i] - c->eps.data[i]);
    if (toy_unet_backward(c->net, &c->dpred) != DL_OK) dl_die("backward");
    double t2 = bench_now();
    if (dl_adamw_step(&c->opt, params, -1.0f) != DL_OK) dl_die("adamw");
    double t3 = bench_now();
    c->fwd = t1 - t0; c->bwd = t2 - t1; c->upd = t3 - t2;
}

/* Run the torch benchmark; returns ms per step, or -1 (with a reason printed). */
static double torch_ms(const char *json, int batch, int threads, int steps)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 bench/toy_unet_torch.py --bench --config '%s' --batch %d --threads %d --steps %d",
             json, batch, threads, steps);
    FILE *p = popen(cmd, "r");
    if (!p) { printf("torch: cannot run %s\n", cmd); return -1; }
    char line[1024];
    double ms = -1;
    while (fgets(line, sizeof line, p)) {
        const char *m = strstr(line, "\"ms_per_step\":");
        if (m) ms = atof(m + 14);
        printf("torch: %s", line);
    }
    if (pclose(p) != 0 || ms <= 0) { printf("torch: the benchmark failed (run it from the repository root)\n"); return -1; }
    return ms;
}

/* Best of `steps` steps (after one warm-up); the phases of the best one in c. */
static double best_step(step_ctx *c, int steps, double phases[3])
{
    step(c);
    double best = 1e30;
    for (int i = 0; i < steps; i++) {
        double t0 = bench_now();
        step(c);
        double dt = bench_now() - t0;
        if (dt < best) { best = dt; phases[0] = c->fwd; phases[1] = c->bwd; phases[2] = c->upd; }
    }
    return best;
}

int main(int argc, char **argv)
{
    int batch = 64, steps = 5, rounds = 2, run_torch = 1, threads_given = 0, paths = 0;
    const char *dataset = "mnist", *channels = NULL;
    char *bargv[16] = {argv[0]};
    int bargc = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dataset") && i + 1 < argc) dataset = argv[++i];
        else if (!strcmp(argv[i], "--channels") && i + 1 < argc) channels = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--paths")) paths = 1;
        else if (!strcmp(argv[i], "--no-torch")) run_torch = 0;
        else if (bargc < 14) {
            threads_given |= !strcmp(argv[i], "--threads");
            bargv[bargc++] = argv[i];
        }
    }
    if (!threads_given) { bargv[bargc++] = "--threads"; bargv[bargc++] = "2"; }
    bench_init(bargc, bargv, "bench_toy_step",
               "One training step of the toy U-Net (forward, MSE, backward, AdamW) in C and in PyTorch.\n"
               "  --batch N (64)  --dataset mnist|emoji  --channels A,B,C (another width/depth, attention at the lowest)\n"
               "  --steps N (5, best is reported)  --rounds R (2: ours and torch take turns)  --no-torch\n"
               "  --paths      also time our step with the plain im2col/sgemm kernels");
    if (batch < 1 || batch > 4096 || steps < 1 || rounds < 1 || rounds > 100)
        dl_die_msg("--batch 1..4096, --steps >= 1, --rounds 1..100", "bad --batch, --steps or --rounds");
    if (bench_quick()) steps = 2;

    toy_unet_config cfg;
    if (toy_unet_config_default(&cfg, dataset) != DL_OK) dl_die("--dataset mnist or emoji");
    if (channels) {   /* another width / depth: "16,32,64" (attention stays at the lowest level) */
        int n = 0;
        for (const char *p = channels; *p && n < TOY_UNET_MAX_LEVELS; n++) {
            cfg.block_out_channels[n] = atoi(p);
            p = strchr(p, ',');
            if (!p) { n++; break; }
            p++;
        }
        cfg.levels = n;
        cfg.attention_levels = 1 << (n - 1);
        cfg.time_embed_dim = 4 * cfg.block_out_channels[0];
        if (toy_unet_config_check(&cfg) != DL_OK) dl_die("--channels like 16,32,64");
    }
    char json[512];
    toy_unet_config_to_json(&cfg, json, sizeof json);
    step_ctx c = {0};
    if (toy_unet_create(&c.net, &cfg, batch, 0) != DL_OK) dl_die(NULL);
    if (dl_adamw_init(&c.opt, toy_unet_params(c.net), 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f) != DL_OK) dl_die(NULL);
    const int S = cfg.image_size;
    const int64_t *shape = DL_SHAPE(batch, cfg.in_channels, S, S);
    if (dl_tensor_alloc(&c.x, 4, shape) || dl_tensor_alloc(&c.eps, 4, shape) || dl_tensor_alloc(&c.pred, 4, shape) ||
        dl_tensor_alloc(&c.dpred, 4, shape)) dl_die(NULL);
    c.t = malloc(sizeof(float) * batch);
    c.ids = malloc(sizeof(int) * batch);
    dl_rng rng;
    dl_rng_seed(&rng, 0);
    dl_rng_randn_tensor(&rng, &c.x);
    dl_rng_randn_tensor(&rng, &c.eps);
    for (int b = 0; b < batch; b++) {
        c.t[b] = (float)(dl_rng_u32(&rng) % 1000);
        c.ids[b] = (int)(dl_rng_u32(&rng) % (uint32_t)(cfg.num_classes + 1));
    }
    printf("toy U-Net %s: %s\n  %lld parameters, %.0f MiB for activations and gradients at batch %d\n", dataset, json,
           (long long)dl_params_numel(toy_unet_params(c.net)), toy_unet_memory_bytes(c.net) / 1048576.0, batch);

    if (run_torch && system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("torch: /usr/bin/python3 with torch is not available, no comparison\n");
        run_torch = 0;
    }
    double best = 1e30, best_torch = 1e30, ph[3] = {0}, best_ph[3] = {0};
    for (int r = 0; r < rounds; r++) {
        const double ms = best_step(&c, steps, ph) * 1e3;
        printf("ours:  %.1f ms/step (forward %.1f, backward %.1f, AdamW %.1f) at batch %d, %d threads\n", ms,
               ph[0] * 1e3, ph[1] * 1e3, ph[2] * 1e3, batch, dl_get_threads());
        if (ms < best) { best = ms; memcpy(best_ph, ph, sizeof ph); }
        if (!run_torch) continue;
        const double tm = torch_ms(json, batch, dl_get_threads(), steps);
        if (tm <= 0) { run_torch = 0; continue; }
        printf("torch: %.1f ms/step   (this round: ratio %.2f)\n", tm, ms / tm);
        if (tm < best_torch) best_torch = tm;
    }
    if (paths) {
        conv2d_use_direct(0);
        linear_use_direct(0);
        const double plain = best_step(&c, steps, ph) * 1e3;
        conv2d_use_direct(1);
        linear_use_direct(1);
        printf("ours with im2col + sgemm convolutions and sgemm linears: %.1f ms/step (forward %.1f, backward %.1f):"
               " the direct kernels save %.0f%%\n", plain, ph[0] * 1e3, ph[1] * 1e3, 100.0 * (1.0 - best / plain));
    }
    printf("best ours: %.1f ms/step (forward %.1f, backward %.1f, AdamW %.1f)\n", best, best_ph[0] * 1e3,
           best_ph[1] * 1e3, best_ph[2] * 1e3);
    if (run_torch && best_torch < 1e30)
        printf("best torch: %.1f ms/step\nratio ours / torch = %.2f (target <= 0.70)\n", best_torch, best / best_torch);
    dl_tensor_free(&c.x); dl_tensor_free(&c.eps); dl_tensor_free(&c.pred); dl_tensor_free(&c.dpred);
    free(c.t); free(c.ids);
    dl_adamw_free(&c.opt);
    toy_unet_free(c.net);
    return 0;
}
