// Package backends builds the Registry of every backend in infer.BackendNames, one
// constructor per name. It links every runtime package (and OpenCV), so only the
// program's wiring, agent/, imports it.
package backends
