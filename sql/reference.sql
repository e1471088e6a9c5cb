-- Reference data every deployment needs: the fares in force and Bogotá's localities.
-- Applied with the schema; ON CONFLICT DO NOTHING keeps an operator's own edits.

INSERT INTO fares (fare_type, value, start_date, description) VALUES
    ('STANDARD_SITP',     2950, '2025-01-01', 'Full fare, TransMilenio and SITP buses'),
    ('TRANSFER_0_COST',      0, '2025-01-01', 'Transfer onto TransMiCable within 90 minutes'),
    ('TRANSFER_200_COST',  200, '2025-01-01', 'Transfer onto another route within 90 minutes'),
    ('STANDARD_CABLE',    2950, '2025-01-01', 'Full fare, TransMiCable')
ON CONFLICT (fare_type, start_date) DO NOTHING;

INSERT INTO locations (name, description) VALUES
    ('Usaquén', 'Localidad 1'), ('Chapinero', 'Localidad 2'), ('Santa Fe', 'Localidad 3'),
    ('San Cristóbal', 'Localidad 4'), ('Usme', 'Localidad 5'), ('Tunjuelito', 'Localidad 6'),
    ('Bosa', 'Localidad 7'), ('Kennedy', 'Localidad 8'), ('Fontibón', 'Localidad 9'),
    ('Engativá', 'Localidad 10'), ('Suba', 'Localidad 11'), ('Barrios Unidos', 'Localidad 12'),
    ('Teusaquillo', 'Localidad 13'), ('Los Mártires', 'Localidad 14'),
    ('Antonio Nariño', 'Localidad 15'), ('Puente Aranda', 'Localidad 16'),
    ('La Candelaria', 'Localidad 17'), ('Rafael Uribe Uribe', 'Localidad 18'),
    ('Ciudad Bolívar', 'Localidad 19'), ('Sumapaz', 'Localidad 20')
ON CONFLICT (name) DO NOTHING;
