// Package integration holds black-box tests: embedded nats-servers on random
// ports, real nats.go clients, workers on the sim backend, talking NATS
// exactly as a user's client would.
package integration
