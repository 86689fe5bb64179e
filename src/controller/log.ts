// The service's log: one JSON object per event on stderr ({time, level, job, msg,
// fields}), for journald and log shippers; a readable line instead when stderr is a
// terminal.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Record<string, string | number | boolean | null>;

export interface LogEvent {
  time: string;
  level: LogLevel;
  job: string | null;
  msg: string;
  fields: LogFields;
}

export class Logger {
  constructor(
    private readonly write: (line: string) => void = (line) => process.stderr.write(line),
    private readonly human: boolean = process.stderr.isTTY === true,
  ) {}

  info(msg: string, job: string | null = null, fields: LogFields = {}): void {
    this.log('info', msg, job, fields);
  }

  warn(msg: string, job: string | null = null, fields: LogFields = {}): void {
    this.log('warn', msg, job, fields);
  }

  error(msg: string, job: string | null = null, fields: LogFields = {}): void {
    this.log('error', msg, job, fields);
  }

  log(level: LogLevel, msg: string, job: string | null, fields: LogFields): void {
    const event: LogEvent = { time: new Date().toISOString(), level, job, msg, fields };
    this.write((this.human ? formatHuman(event) : JSON.stringify(event)) + '\n');
  }
}

function formatHuman(e: LogEvent): string {
  const extra = Object.entries(e.fields).map(([k, v]) => `${k}=${typeof v === 'string' && /\s/.test(v) ? JSON.stringify(v) : String(v)}`);
  return `${e.time.slice(11, 23)} ${e.level.toUpperCase().padEnd(5)} ${e.job ? `[${e.job}] ` : ''}${e.msg}${extra.length ? `  ${extra.join(' ')}` : ''}`;
}
