// Package infer turns frames into detections. This root package is pure Go and holds
// what every room may share: the Engine and Backend contracts, tensor descriptions,
// the model bundle manifest (model.yaml), detections, and the output decoders with NMS.
//
// Runtimes live in sub-packages (infer/onnxrt, ...), each loading its library at run
// time; infer/detector adds gocv pre-processing around an Engine; infer/backends lists
// the backends this build knows. Only agent/ wires them together.
package infer
