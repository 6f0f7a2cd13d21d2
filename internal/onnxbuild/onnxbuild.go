// Package onnxbuild writes small ONNX models field by field (field numbers from
// onnx/onnx.proto), for tests and test fixtures that need a real model file of a
// given shape without a Python toolchain: the fleet load test's tiny classifier, the
// OpenCV backend's synthetic models.
package onnxbuild

import "google.golang.org/protobuf/encoding/protowire"

// Message is a protobuf message being written.
type Message []byte

// Varint appends field num as a varint.
func (m Message) Varint(num protowire.Number, v uint64) Message {
	return protowire.AppendVarint(protowire.AppendTag(m, num, protowire.VarintType), v)
}

// Bytes appends field num as length-delimited bytes (a string or a nested message).
func (m Message) Bytes(num protowire.Number, b []byte) Message {
	return protowire.AppendBytes(protowire.AppendTag(m, num, protowire.BytesType), b)
}

// String appends field num as a string.
func (m Message) String(num protowire.Number, s string) Message { return m.Bytes(num, []byte(s)) }

// FloatTensor is a ValueInfoProto: a float32 tensor of the given shape.
func FloatTensor(name string, dims ...uint64) Message {
	var shape Message
	for _, d := range dims {
		shape = shape.Bytes(1, Message(nil).Varint(1, d)) // TensorShapeProto.dim.dim_value
	}
	tensor := Message(nil).Varint(1, 1).Bytes(2, shape) // elem_type FLOAT, shape
	return Message(nil).String(1, name).Bytes(2, Message(nil).Bytes(1, tensor))
}
