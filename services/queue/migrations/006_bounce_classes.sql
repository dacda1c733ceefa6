-- Bounce classification (libs/dsn classify): the class of each failed
-- attempt, and the operator's rules checked before the built-in ones.
ALTER TABLE attempts ADD COLUMN bounce_class text NOT NULL DEFAULT '';

CREATE TABLE bounce_rules (
  name        text PRIMARY KEY,
  code_prefix text NOT NULL DEFAULT '',
  pattern     text NOT NULL DEFAULT '',
  bounce_class text NOT NULL,
  description text NOT NULL DEFAULT '',
  updated_at  timestamptz NOT NULL DEFAULT now()
);
