// Package fleetload is the fleet load test (issue 11): many real agents (agent.New and
// Run, a pattern camera, a sim actuator, each with its own state directory, outbox and
// MQTT session) in one process against one real mosquitto on loopback, a group push of
// a signed model bundle in chunks through the real push code (sync/deploy/push), and a
// report: the time until every device is active (or why not), the messages per second
// through the broker, the memory per simulated device, and whether every telemetry and
// event seq of every device arrived.
//
// The package holds the pieces the test uses (a tiny ONNX model and its bundle, the
// seq accounting, the report); the test itself is fleet_test.go:
//
//	go test ./internal/fleetload -run FleetLoad -fleet.devices=1000 -timeout 30m -v
//
// or scripts/fleet-load 1000. The ordinary test run includes a small fleet.
package fleetload
