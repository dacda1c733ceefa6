// Entry point: libs/runtime's defineService reads the environment (and only
// it), sets up telemetry and runs the app until SIGTERM.
import { defineService } from '@tern/runtime';
import { createApp } from './app';
import { loadConfig } from './config';

defineService({ name: 'webhooks', loadConfig, createApp });
