// Package hal drives the hardware Vigil acts on and reads the hardware it listens to:
// named outputs (relays, stack lights, a weld robot's pause line) and debounced digital
// inputs (an operator's acknowledge button, a "robot running" interlock). Only agent
// imports it.
//
// The root package holds the contracts and the one implementation of their logic:
// Output (an actuator: safe level at start and on Close, pulses, a visible fault state),
// Input (debounce, fault state) and the Retrying wrappers that open a line lazily so a
// GPIO adapter plugged in after start begins to work. Drivers only move or read a line:
// hal/sim keeps it in memory, hal/gpio reaches the Linux GPIO character device through
// periph.io. Levels are logical everywhere above the driver: an active-low line is
// inverted in its driver, so Output and Input never see the electrical level.
//
// hal never imports gocv or an inference runtime, so its tests run anywhere.
package hal
