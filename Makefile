# difflab - one Makefile for the core library, viz, lessons, tests and benchmarks.
#
#   make              build everything (bin/)
#   make test         run all tests            make test K=conv2d   one group
#   make test-asan    the tests under AddressSanitizer + UBSan
#   make bench        benchmarks against this machine's own ceilings
#   make bench-toy    toy U-Net: training-step time vs PyTorch, judged sample quality
#   make bench-sd     Stable Diffusion 1.5-sized UNet / VAE / text encoder vs sgemm (random weights)
#   make demo         the main demo (lesson 01, live if there is a display)

PKGS     := sdl2 stb libcjson
# OpenBLAS: prefer Debian's OpenMP build (libopenblas-openmp-dev) so that our
# own OpenMP loops and the BLAS threads share one thread pool. With the
# default pthread build, OpenMP threads spinning after a parallel loop steal
# a core from the next sgemm (measured: conv2d at 52-64% of sgemm instead of
# about 90%). Without the OpenMP build we fall back to the default one.
MULTIARCH   := $(shell $(or $(CC),cc) -print-multiarch 2>/dev/null)
BLAS_OMP_PC := /usr/lib/$(MULTIARCH)/openblas-openmp/pkgconfig
ifneq ($(wildcard $(BLAS_OMP_PC)/openblas.pc),)
  BLAS_PKGCONFIG := PKG_CONFIG_PATH=$(BLAS_OMP_PC) pkg-config
  BLAS_LIBS      := $(shell $(BLAS_PKGCONFIG) --libs openblas) \
                    -Wl,-rpath,$(shell $(BLAS_PKGCONFIG) --variable=libdir openblas)
else
  BLAS_PKGCONFIG := pkg-config
  BLAS_LIBS      := $(shell pkg-config --libs openblas)
endif
BLAS_CFLAGS := $(shell $(BLAS_PKGCONFIG) --cflags openblas)
CC       ?= cc
OPT      ?= -O3 -march=native
# -ffp-contract=off: no silent FMA fusion, so results match PyTorch's float
# arithmetic step by step (the torch-identical RNG and schedules rely on it).
CFLAGS   += -std=c11 -D_GNU_SOURCE $(OPT) -ffp-contract=off -fopenmp -Wall -Wextra -g \
            -MMD -MP $(BLAS_CFLAGS) $(shell pkg-config --cflags $(PKGS))
LDLIBS   += $(BLAS_LIBS) $(shell pkg-config --libs $(PKGS)) -lz -lm -fopenmp

BUILD    ?= build
BIN      ?= bin

CORE_SRC   := $(wildcard core/*.c)
VIZ_SRC    := $(wildcard viz/*.c)
LESSON_SRC := $(wildcard lessons/*.c)
TEST_SRC   := $(wildcard tests/*.c)
BENCH_SRC  := $(filter-out bench/bench_util.c,$(wildcard bench/*.c))
TOOL_SRC   := $(wildcard tools/*.c)

CORE_OBJ   := $(CORE_SRC:%.c=$(BUILD)/%.o)
VIZ_OBJ    := $(VIZ_SRC:%.c=$(BUILD)/%.o)
LESSONS    := $(LESSON_SRC:lessons/%.c=$(BIN)/%)
BENCHES    := $(BENCH_SRC:bench/%.c=$(BIN)/%)
TOOLS      := $(TOOL_SRC:tools/%.c=$(BIN)/%)
CORE_LIB   := $(BUILD)/libdifflab.a
VIZ_LIB    := $(if $(VIZ_SRC),$(BUILD)/libdifflab_viz.a)

.PHONY: all test test-asan bench bench-toy bench-sd demo clean
all: $(LESSONS) $(TOOLS) $(BIN)/run_tests $(BENCHES)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(CORE_LIB): $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(VIZ_LIB): $(VIZ_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN)/%: $(BUILD)/lessons/%.o $(VIZ_LIB) $(CORE_LIB)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BIN)/%: $(BUILD)/tools/%.o $(VIZ_LIB) $(CORE_LIB)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BIN)/run_tests: $(TEST_SRC:%.c=$(BUILD)/%.o) $(VIZ_LIB) $(CORE_LIB)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BIN)/bench_%: $(BUILD)/bench/bench_%.o $(BUILD)/bench/bench_util.o $(VIZ_LIB) $(CORE_LIB)
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

# Tests run from the repository root; K filters by "group/name" substring.
test: all
	@$(BIN)/run_tests $(K)

# Same tests, separate build tree, sanitizers on. Lesson binaries used by
# tests are the sanitized ones too (DL_BIN_DIR).
test-asan:
	$(MAKE) BUILD=build/asan BIN=build/asan/bin OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	        LDLIBS_EXTRA= all
	@ASAN_OPTIONS=detect_leaks=0 DL_BIN_DIR=build/asan/bin DL_ASAN=1 build/asan/bin/run_tests $(K)

# Kernel benchmarks; the toy U-Net ones (training-step speed against PyTorch,
# sample quality judged by the MNIST classifier) and the SD-sized one (writes
# ~2 GB of random weights to a temp folder) take longer: make bench-toy, bench-sd.
bench: all
	@for b in $(filter-out $(BIN)/bench_toy% $(BIN)/bench_sd,$(BENCHES)); do echo "== $$b"; $$b || exit 1; done

bench-toy: all
	@echo "== $(BIN)/bench_toy_step --rounds 3 --paths"; $(BIN)/bench_toy_step --rounds 3 --paths
	@echo "== $(BIN)/bench_toy_quality"; $(BIN)/bench_toy_quality

bench-sd: all
	@$(BIN)/bench_sd

demo: all
	$(BIN)/01_forward_noising

clean:
	rm -rf build bin out

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Fuzzing (needs clang with libFuzzer; not part of all / test): each harness
# fuzz/fuzz_<name>.c runs FUZZ_SECONDS on its seeds in fuzz/corpus/<name>/.
# Inputs that reach new code are kept in build/fuzz/corpus/<name>/; a crash
# stops make and leaves its input in build/fuzz/crash-* (turn it into a test
# in tests/fixtures/fuzz_regressions/ once fixed).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DIR     := build/fuzz
FUZZ_NAMES   := safetensors json_configs tokenizer
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer -fopenmp -Wall -Wextra -Wno-pass-failed $(FUZZ_SAN) \
                $(shell pkg-config --cflags openblas libcjson)
FUZZ_LIBS    := $(shell pkg-config --libs openblas libcjson) -lm
# only the core files each harness needs (the config parsers live next to their models)
FUZZ_SRC_safetensors  := core/safetensors.c core/tensor.c core/dl_error.c
FUZZ_SRC_tokenizer    := core/clip_tokenizer.c core/unicode_tables.c core/dl_error.c
FUZZ_SRC_json_configs := $(addprefix core/,scheduler_config.c sd_unet.c sd_unet_blocks.c sd_vae.c clip_text.c \
                         toy_unet.c toy_unet_blocks.c sd_weights.c safetensors.c tensor.c dl_error.c attention.c \
                         conv2d.c conv2d_direct.c elementwise.c embedding.c linear.c norm.c param.c resample.c \
                         rng.c norm_silu.c timestep_embedding.c sampling.c schedule.c sampler_ddpm_ddim.c sampler_dpm.c \
                         sampler_euler.c sampler_kdpm2.c sampler_lcm.c sampler_pndm.c sampler_schedule.c sampler_unipc.c)

.PHONY: fuzz
fuzz: $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)
	@for h in $(FUZZ_NAMES); do \
	    mkdir -p $(FUZZ_DIR)/corpus/$$h; \
	    echo "== fuzz_$$h for $(FUZZ_SECONDS) s"; \
	    $(FUZZ_DIR)/fuzz_$$h -max_total_time=$(FUZZ_SECONDS) -dict=fuzz/fuzz.dict -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/corpus/$$h fuzz/corpus/$$h || exit 1; \
	done

$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_DIR)/fuzz_safetensors: $(FUZZ_DIR)/obj/fuzz/fuzz_safetensors.o $(FUZZ_SRC_safetensors:%.c=$(FUZZ_DIR)/obj/%.o)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ -o $@ $(FUZZ_LIBS)
$(FUZZ_DIR)/fuzz_tokenizer: $(FUZZ_DIR)/obj/fuzz/fuzz_tokenizer.o $(FUZZ_SRC_tokenizer:%.c=$(FUZZ_DIR)/obj/%.o)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ -o $@ $(FUZZ_LIBS)
$(FUZZ_DIR)/fuzz_json_configs: $(FUZZ_DIR)/obj/fuzz/fuzz_json_configs.o $(FUZZ_SRC_json_configs:%.c=$(FUZZ_DIR)/obj/%.o)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ -o $@ $(FUZZ_LIBS)

-include $(wildcard $(FUZZ_DIR)/obj/*/*.d)
