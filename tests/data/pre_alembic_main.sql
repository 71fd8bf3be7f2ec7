BEGIN TRANSACTION;
CREATE TABLE states (
	state_id VARCHAR(64) NOT NULL, 
	fingerprint VARCHAR(64) NOT NULL, 
	parent_id VARCHAR(64), 
	num_tokens INTEGER NOT NULL, 
	token_ids BLOB NOT NULL, 
	config TEXT NOT NULL, 
	checkpoints TEXT NOT NULL, 
	meta TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	modified_at DATETIME NOT NULL, 
	PRIMARY KEY (state_id)
);
INSERT INTO "states" VALUES('st_parent','fp-tiny',NULL,5,X'01000000DA2500001C00000000000000FFBF0000','{"temperature": 0.7, "top_p": 0.9, "seed": 7}','{"greeting": 3}','{}','2026-11-20 08:30:00.123456','2026-11-20 08:31:00.000000');
INSERT INTO "states" VALUES('st_child','fp-tiny','st_parent',7,X'01000000DA2500001C00000000000000FFBF0000FFFFFF7F11000000','{"temperature": 0.0}','{"greeting": 3, "answer": 7}','{"merged_from": ["st_parent", "st_other"]}','2026-11-21 09:00:00.000000','2026-11-21 09:05:30.500000');
CREATE TABLE variants (
	session_id VARCHAR(128) NOT NULL, 
	variant_id VARCHAR(128) NOT NULL, 
	spec TEXT NOT NULL, 
	parent_variant_id VARCHAR(128), 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (session_id, variant_id)
);
INSERT INTO "variants" VALUES('alice-notes','default','{"base_model":"tiny-llama","edits":[{"feature":{"uuid":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","label":"pirate talk","index_in_sae":3},"mode":"nudge","value":0.25}],"scopes":[]}',NULL,'2026-11-30 03:30:11.835536','2026-11-30 03:30:11.836852');
INSERT INTO "variants" VALUES('alice-notes','pirate','{"base_model":"tiny-llama","edits":[{"feature":{"uuid":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","label":"pirate talk","index_in_sae":3},"mode":"nudge","value":0.25},{"feature":{"uuid":"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1","label":"calm","index_in_sae":7},"mode":"pin","value":0.5}],"scopes":[]}','default','2026-11-30 03:30:11.840786','2026-11-30 03:30:11.841824');
INSERT INTO "variants" VALUES('alice-notes','empty','{"base_model":"tiny-llama","edits":[],"scopes":[]}',NULL,'2026-11-30 03:30:11.842638','2026-11-30 03:30:11.842641');
INSERT INTO "variants" VALUES('bob:42','default','{"base_model":"tiny-llama","edits":[{"feature":{"uuid":"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1","label":"calm","index_in_sae":7},"mode":"ablate","value":0.0}],"scopes":[]}',NULL,'2026-11-30 03:30:11.843299','2026-11-30 03:30:11.843612');
INSERT INTO "variants" VALUES('bob:42','pirate','{"base_model":"tiny-llama","edits":[{"feature":{"uuid":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","label":"pirate talk","index_in_sae":3},"mode":"mul","value":2.0}],"scopes":[]}',NULL,'2026-11-30 03:30:11.844402','2026-11-30 03:30:11.845268');
CREATE INDEX ix_states_parent_id ON states (parent_id);
CREATE INDEX ix_states_fingerprint ON states (fingerprint);
COMMIT;
