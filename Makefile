# Everything a fresh machine needs: a virtualenv with the Python package and
# its dependencies, and the native library built by CMake.
#   make run   - set up, then generate text with the engine on the default model
#   make test  - set up, then run the native unit tests and the Python test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
NATIVE_SOURCES := CMakeLists.txt $(shell find native -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \))

.PHONY: setup native proto run test bench clean

setup: $(VENV)/.installed native proto

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch (the registry's default build pulls several GB of CUDA packages).
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,proto]"
	# CUTLASS's headers, for the prefill-size w4a16 GEMM of CUDA builds (CMake finds them in the venv); its
	# Python interface and that interface's dependencies are not used.
	$(BIN)/pip install -q --no-deps "nvidia-cutlass==4.2.0.0"
	touch $@

native: build/libvlmcore.so

# The gRPC modules (python/vlmserve/_proto/, not committed) are generated from protos/.
proto: python/vlmserve/_proto/__init__.py

python/vlmserve/_proto/__init__.py: $(wildcard protos/vlm/v1/*.proto) python/vlmserve/proto_build.py $(VENV)/.installed
	$(BIN)/python python/vlmserve/proto_build.py

build/libvlmcore.so: $(NATIVE_SOURCES) $(VENV)/.installed
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j $(JOBS)

run: setup
	$(BIN)/vlmserve demo

test: setup
	cd build && ctest --output-on-failure
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/cpu_engine.py

clean:
	rm -rf build $(VENV)
