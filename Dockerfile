# One image for every vlmserve process: the native library built by CMake plus
# the Python package. Portable CPU code (no -march=native); the CUDA sources
# are compiled when the build image has nvcc.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/vlmserve
COPY CMakeLists.txt ./
COPY native ./native
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DVLM_NATIVE_ARCH=OFF -DVLM_BUILD_TESTS=OFF \
 && cmake --build build -j "$(nproc)"

COPY pyproject.toml README.md ./
COPY protos ./protos
COPY python ./python
# torch from the registry (a CUDA build); the gRPC modules are generated from protos/ first.
RUN pip install --no-cache-dir torch grpcio-tools \
 && python python/vlmserve/proto_build.py \
 && pip install --no-cache-dir .

ENV VLMSERVE_LIB=/opt/vlmserve/build/libvlmcore.so \
    VLMSERVE_CACHE=/models
VOLUME ["/models"]
ENTRYPOINT ["vlmserve"]
