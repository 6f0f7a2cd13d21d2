// Package backends builds the Registry of every backend in infer.BackendNames, one
// constructor per name, and Load, which loads a bundle on one of them. It links every
// runtime package (and OpenCV), so only the program's wiring, agent/, and the benchmark
// harness behind `vigil bench` (cmd/vigil) import it.
package backends
