package fleetload

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// SysMonitor keeps mosquitto's latest $SYS/broker/... counters (published every
// sys_interval): messages and bytes received and sent, clients, retained messages.
type SysMonitor struct {
	client paho.Client

	mu     sync.Mutex
	values map[string]float64 // by topic without "$SYS/broker/"
	at     map[string]time.Time
}

// SysSample is the counters at one moment.
type SysSample struct {
	Values map[string]float64
	At     map[string]time.Time
}

// WatchSys connects to broker and subscribes to $SYS/broker/#.
func WatchSys(broker string) (*SysMonitor, error) {
	m := &SysMonitor{values: map[string]float64{}, at: map[string]time.Time{}}
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("fleetload-sys-%d", time.Now().UnixNano()))
	m.client = paho.NewClient(o)
	if tok := m.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("$SYS monitor: connect to %s: %v", broker, tok.Error())
	}
	tok := m.client.Subscribe("$SYS/broker/#", 0, func(_ paho.Client, msg paho.Message) {
		v, err := strconv.ParseFloat(strings.Fields(string(msg.Payload()) + " x")[0], 64)
		if err != nil {
			return // the version string, uptime "N seconds" parses; others are skipped
		}
		key := strings.TrimPrefix(msg.Topic(), "$SYS/broker/")
		m.mu.Lock()
		m.values[key], m.at[key] = v, time.Now()
		m.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		m.client.Disconnect(0)
		return nil, fmt.Errorf("$SYS monitor: subscribe: %v", tok.Error())
	}
	return m, nil
}

// Sample copies the latest counters.
func (m *SysMonitor) Sample() SysSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := SysSample{Values: map[string]float64{}, At: map[string]time.Time{}}
	for k, v := range m.values {
		s.Values[k], s.At[k] = v, m.at[k]
	}
	return s
}

// Updated reports whether key was published after t.
func (m *SysMonitor) Updated(key string, t time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.at[key].After(t)
}

// Close disconnects.
func (m *SysMonitor) Close() { m.client.Disconnect(100) }

// Rate is key's increase per second from a to b (0 when either lacks it).
func Rate(a, b SysSample, key string) float64 {
	va, oka := a.Values[key]
	vb, okb := b.Values[key]
	dt := b.At[key].Sub(a.At[key]).Seconds()
	if !oka || !okb || dt <= 0 {
		return 0
	}
	return (vb - va) / dt
}

// ProcStat is a process's CPU time and resident memory, from /proc.
type ProcStat struct {
	CPU time.Duration
	RSS int64
	At  time.Time
}

// ReadProc reads /proc/<pid>/stat (pid 0: this process).
func ReadProc(pid int) (ProcStat, error) {
	p := "self"
	if pid > 0 {
		p = strconv.Itoa(pid)
	}
	b, err := os.ReadFile("/proc/" + p + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	// The command name (field 2) may hold spaces; the fields after its ")" are fixed.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 22 {
		return ProcStat{}, fmt.Errorf("/proc/%s/stat: %d fields", p, len(f))
	}
	// utime, stime (fields 14, 15) in clock ticks; rss (field 24) in pages.
	const tick = 100 // USER_HZ on Linux
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	rss, _ := strconv.ParseInt(f[21], 10, 64)
	return ProcStat{CPU: time.Duration(ut+st) * time.Second / tick, RSS: rss * int64(os.Getpagesize()), At: time.Now()}, nil
}

// Cores is the CPU used between a and b, in cores (1 = one core busy).
func Cores(a, b ProcStat) float64 {
	wall := b.At.Sub(a.At)
	if wall <= 0 {
		return 0
	}
	return float64(b.CPU-a.CPU) / float64(wall)
}
