// Package infer turns frames into detections. This root package is pure Go and holds
// what every room may share: the Engine and Backend contracts, tensor descriptions,
// the model bundle manifest (model.yaml), detections, and the output decoders with NMS.
//
// Runtimes live in sub-packages (infer/onnxrt, infer/tflite, infer/openvino, each opening
// its library at run time; infer/ocvdnn over the OpenCV that capture links anyway);
// infer/modelfile reads ONNX and TFLite files in pure Go; infer/detector adds gocv
// pre-processing around an Engine. BackendNames lists the backends once; infer/backends
// builds them into an infer.Registry, and only agent/ imports it.
//
// # Decoders
//
// model.yaml's output.decoder picks how output tensors become detections; the shapes
// are checked against the labels when the model loads:
//
//   - yolox: one output [1, rows, 5+C] (box, objectness, class scores per grid cell of
//     output.strides).
//   - yolov8: one ultralytics detect output [1, 4+C, N] (cx, cy, w, h in input pixels,
//     then C class scores) or its transpose [1, N, 4+C].
//   - ssd: the four outputs of TFLite's detection post-process (boxes, class ids,
//     scores, count), told apart by shape; output.class_offset shifts class ids onto
//     the labels, output.scores_output names the scores output where names don't say.
//   - classify (with task: classify): one output [1, C]; output.softmax says whether it
//     is logits, output.top_k how many classes to report (as whole-frame detections).
//
// Every decoder keeps scores above thresholds.score, runs NMS per class (or across
// classes with output.nms: agnostic; classify needs none), keeps the best
// output.max_detections (default 100), and maps boxes back to the frame, clipped.
// Decoding appends to a caller's slice, so a reused slice makes it allocation-free.
package infer
