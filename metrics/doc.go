// Package metrics will hold cgfs's Prometheus metrics: operations,
// refusals and per-container use. It is empty until the first metric
// lands.
package metrics
