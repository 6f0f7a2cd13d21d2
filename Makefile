# The verbs a newcomer types. `make run` and `make test` are the README's quick start.
GO      ?= go
VERSION ?= $(shell git describe --tags --match 'v[0-9]*' --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
CONFIG  ?=

.PHONY: all deps build build-arm64 run test test-arm64 vmtest test-mats bench bench-compare check-config deb deb-arm64 fmt vet clean

all: build

## deps: install apt packages, the ONNX Runtime and TFLite libraries, the locale (idempotent; needs root or sudo)
deps:
	scripts/install-deps

## build: build bin/vigil
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/vigil ./cmd/vigil

## build-arm64: cross-build bin/vigil-arm64 on an amd64 Debian 12 machine: cgo and gocv against
## Debian's arm64 OpenCV, unpacked into a cached arm64 root (scripts/build-arm64, scripts/arm64-sysroot;
## ARM64_CACHE, default ~/.cache/vigil-arm64; installs the cross gcc from apt when missing).
## `scripts/arm64 ARGS...` runs it under qemu-aarch64-static.
build-arm64:
	VERSION="$(VERSION)" GO="$(GO)" scripts/build-arm64

## run: install what is missing, build, and run the agent (embedded defaults unless CONFIG=file)
run: deps build
	./bin/vigil run $(if $(CONFIG),--config $(CONFIG))

## test: install what is missing and run every test (real ONNX Runtime, OpenCV, files)
test:
	scripts/test

## test-arm64: the tests as arm64 code on an amd64 machine: every package's test binary cross-compiled
## (`go test -c`, as build-arm64) and run under qemu-aarch64-static against the arm64 root, with the arm64
## ONNX Runtime; one line per package, then "N passed, N failed" (scripts/test-arm64; slow: emulated)
test-arm64:
	GO="$(GO)" scripts/test-arm64

## vmtest: hardware in the loop: the V4L2 and GPIO tests (-tags vmtest) inside a QEMU VM with
## the kernel's vivid camera and a looped-back GPIO chip (scripts/vmtest; needs root or sudo for apt)
vmtest:
	scripts/vmtest

## test-mats: the pipeline tests with gocv's Mat leak counter
test-mats:
	$(GO) test -count=1 -tags matprofile ./capture ./agent

## bench: engines (ours against a bare ONNX Runtime session, TFLite), detector stages,
## decoders, decode (file, RTSP), rule-to-actuator, and the pipeline incl. four RTSP cameras.
## `vigil bench` measures a configured camera; `make bench-compare` pits it against Python.
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 40x ./infer/onnxrt ./infer/tflite ./infer/detector ./capture
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./infer
	$(GO) test -run '^$$' -bench 'RuleToActuator' -benchtime 20000x ./agent
	$(GO) test -run '^$$' -bench 'CaptureToActuator|DeploySwap' -benchtime 1x ./agent
	$(GO) test -run '^$$' -bench 'Pipeline|FourRTSP' -benchtime 1x ./cmd/vigil

## bench-compare: `vigil bench` and the plain Python + OpenCV-DNN loop a user would write
## (scripts/bench-python-opencv) on the same clip and model, BENCH_SECONDS per stage; prints
## both rates and their ratio. Installs python3-opencv (scripts/install-deps --bench).
BENCH_SECONDS ?= 10
bench-compare: build
	scripts/install-deps --bench
	printf '%s\n' 'cameras: [{name: sample, url: "file://assets/footage/people.mp4"}]' \
		'models: [{name: default, bundle: assets/models/yolox-nano}]' > bin/bench-compare.yaml
	./bin/vigil bench --config bin/bench-compare.yaml --seconds $(BENCH_SECONDS) --json > bin/bench-vigil.json
	/usr/bin/python3 scripts/bench-python-opencv --seconds $(BENCH_SECONDS) \
		--clip assets/footage/people.mp4 --model assets/models/yolox-nano/model.onnx > bin/bench-python.json
	@/usr/bin/python3 scripts/bench-python-opencv --compare bin/bench-vigil.json bin/bench-python.json

## check-config: validate CONFIG (or the embedded defaults)
check-config: build
	./bin/vigil check-config $(CONFIG)

## deb: build dist/vigil_<version>_amd64.deb: the binary, the unit, /etc/vigil/vigil.yaml,
## ONNX Runtime and TFLite in /usr/lib/vigil (packaging/build-deb, nfpm)
deb:
	packaging/build-deb amd64

## deb-arm64: build dist/vigil_<version>_arm64.deb from bin/vigil-arm64 (`make build-arm64` first),
## or from VIGIL_BIN, an arm64 binary built elsewhere; Depends checked against the arm64 root
deb-arm64:
	VERSION="$(VERSION)" packaging/build-deb arm64

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf bin dist
